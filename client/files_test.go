package client

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"testing"

	"github.com/tether-chat/tether/internal/testnet"
	"github.com/tether-chat/tether/protocol"
	"github.com/tether-chat/tether/server"
)

var png1x1 = []byte("\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00\x00\x1f\x15\xc4\x89" +
	"\x00\x00\x00\rIDATx\x9cc\xf8\x0f\x00\x00\x01\x01\x00\x05\x18\xd8N\x00\x00\x00\x00IEND\xaeB`\x82")

// TestSendFileOnceThroughADrop: a picture sent while the connection is
// cut waits in the outbox, goes out after the reconnect, arrives once and
// can be fetched; a refused file is an error with the server's reason.
func TestSendFileOnceThroughADrop(t *testing.T) {
	_, addr := startServer(t, server.Config{MaxFileSize: 4096})
	proxy := testnet.NewProxy(t, addr)
	alice, bob := dialT(t, proxy.Addr(), fast("alice")), dialT(t, addr, fast("bob"))
	next(t, alice, protocol.TypeWelcome)
	ctx := context.Background()

	proxy.Cut()
	ack, err := alice.SendFile(ctx, "general", File{Name: "dot.png", Mime: "image/png", Data: png1x1, Text: "a dot"})
	if err != nil || ack.Seq == 0 {
		t.Fatalf("SendFile = %+v, %v", ack, err)
	}
	m := next(t, bob, protocol.TypeChat).Chat
	if m.File == nil || m.File.Name != "dot.png" || !m.File.Image || m.Text != "a dot" || m.Seq != ack.Seq {
		t.Fatalf("bob got %+v %+v", m, m.File)
	}
	r, err := http.Get(bob.FileURL(m.File))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(r.Body)
	r.Body.Close()
	if r.StatusCode != 200 || !bytes.Equal(body, png1x1) {
		t.Fatalf("GET %s: %d, %d bytes", bob.FileURL(m.File), r.StatusCode, len(body))
	}

	_, err = alice.DirectFile(ctx, "bob", File{Name: "big.png", Data: make([]byte, 5000)})
	var pe *protocol.Error
	if !errors.As(err, &pe) || pe.Code != protocol.ErrFileTooLarge {
		t.Fatalf("a file over the limit: %v", err)
	}
}
