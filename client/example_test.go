package client_test

import (
	"context"
	"fmt"
	"log/slog"
	"net/http/httptest"
	"strings"
	"time"

	"github.com/tether-chat/tether/client"
	"github.com/tether-chat/tether/protocol"
	"github.com/tether-chat/tether/server"
)

// Example shows two Go programs talking through a Tether server: one joins
// a room and waits, the other sends to the room and privately.
func Example() {
	// A server for the example; in real use it is `tether serve`.
	srv, _ := server.New(server.Config{Logger: slog.New(slog.DiscardHandler)})
	hs := httptest.NewServer(srv.Handler())
	defer hs.Close()
	defer srv.Shutdown(context.Background())
	url := "ws" + strings.TrimPrefix(hs.URL, "http") + "/ws"

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	bob, err := client.Dial(ctx, url, &client.Options{User: "bob"})
	if err != nil {
		panic(err)
	}
	defer bob.Close()
	bob.Join(ctx, "ops")

	alice, err := client.Dial(ctx, url, &client.Options{User: "alice"})
	if err != nil {
		panic(err)
	}
	defer alice.Close()
	alice.Join(ctx, "ops")
	ack, _ := alice.Send(ctx, "ops", "deploying v2") // returns when the server acknowledged it
	fmt.Println("acked with seq", ack.Seq)
	alice.Direct(ctx, "bob", "ping me when it's green")

	for ev := range bob.Events() {
		switch ev.Type {
		case protocol.TypeChat:
			fmt.Printf("#%s %s: %s\n", ev.Chat.Room, ev.Chat.From, ev.Chat.Text)
		case protocol.TypeDirect:
			fmt.Printf("private from %s: %s\n", ev.Direct.From, ev.Direct.Text)
			return
		}
	}
	// Output:
	// acked with seq 1
	// #ops alice: deploying v2
	// private from alice: ping me when it's green
}
