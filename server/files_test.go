package server

import (
	"bytes"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/tether-chat/tether/auth"
	"github.com/tether-chat/tether/protocol"
)

// A tiny real PNG (1×1), and bytes that are no picture.
var (
	png1x1 = []byte("\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00\x00\x1f\x15\xc4\x89" +
		"\x00\x00\x00\rIDATx\x9cc\xf8\x0f\x00\x00\x01\x01\x00\x05\x18\xd8N\x00\x00\x00\x00IEND\xaeB`\x82")
	notAPicture = []byte("#!/bin/sh\necho this is not a picture\n")
)

func (c *client) sendFile(h protocol.FileHeader, data []byte) {
	c.t.Helper()
	c.sendRaw(websocket.BinaryMessage, protocol.EncodeFile(h, data))
}

func fetch(t *testing.T, url string) (*http.Response, []byte) {
	t.Helper()
	r, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Body.Close()
	b, _ := io.ReadAll(r.Body)
	return r, b
}

// TestFilesInARoom: a picture sent to a room reaches its members as a
// chat with its file, once (a re-send of its id is acked with the same
// seq), and is served as an image; a file that is not a picture is served
// only as a download; what is wrong is refused in words, and the
// connection goes on.
func TestFilesInARoom(t *testing.T) {
	bothEngines(t, func(t *testing.T, eng engineCase) {
		ts := newTestServer(t, eng.with(Config{MaxFileSize: 1000}))
		alice, bob := connect(t, ts, "alice"), connect(t, ts, "bob")
		if alice.welcome.MaxFile != 1000 {
			t.Fatalf("welcome.max_file = %d", alice.welcome.MaxFile)
		}
		alice.sendFile(protocol.FileHeader{ID: "f1", Room: "general", Name: "dot.png", Mime: "image/png", Text: "a dot"}, png1x1)
		ack := payloadOf[protocol.Ack](t, alice.expect(protocol.TypeAck, isAck("f1")))
		m := payloadOf[protocol.Chat](t, bob.expect(protocol.TypeChat, nil))
		if m.From != "alice" || m.Text != "a dot" || m.Seq != ack.Seq || m.File == nil || !m.File.Image ||
			m.File.Name != "dot.png" || m.File.Mime != "image/png" || m.File.Size != len(png1x1) {
			t.Fatalf("bob got %+v %+v", m, m.File)
		}
		r, body := fetch(t, ts.url+m.File.URL)
		if r.StatusCode != 200 || !bytes.Equal(body, png1x1) || r.Header.Get("Content-Type") != "image/png" ||
			r.Header.Get("X-Content-Type-Options") != "nosniff" {
			t.Fatalf("GET %s: %d %v (%d bytes)", m.File.URL, r.StatusCode, r.Header, len(body))
		}
		// The re-send of a file whose ack was lost: the same seq, delivered once.
		alice.sendFile(protocol.FileHeader{ID: "f1", Room: "general", Name: "dot.png", Mime: "image/png", Text: "a dot"}, png1x1)
		if again := payloadOf[protocol.Ack](t, alice.expect(protocol.TypeAck, isAck("f1"))); again.Seq != ack.Seq {
			t.Fatalf("re-send acked %d, first %d", again.Seq, ack.Seq)
		}
		bob.expectNone(protocol.TypeChat, nil, quiet)

		// Not a picture: delivered as a file to download.
		alice.sendFile(protocol.FileHeader{ID: "f2", Room: "general", Name: `<b onmouseover="x()">run.sh`}, notAPicture)
		m = payloadOf[protocol.Chat](t, bob.expect(protocol.TypeChat, nil))
		if m.File == nil || m.File.Image || m.File.Name != `<b onmouseover="x()">run.sh` {
			t.Fatalf("bob got %+v", m.File)
		}
		r, _ = fetch(t, ts.url+m.File.URL)
		if r.Header.Get("Content-Type") != "application/octet-stream" || !strings.HasPrefix(r.Header.Get("Content-Disposition"), "attachment") {
			t.Fatalf("a file that is not a picture served as %v", r.Header)
		}

		for _, tc := range []struct {
			h    protocol.FileHeader
			data []byte
			code protocol.ErrorCode
			says string
		}{
			{protocol.FileHeader{ID: "e1", Room: "general", Name: "cat.png", Mime: "image/png"}, notAPicture, protocol.ErrBadFile, "its bytes are"},
			{protocol.FileHeader{ID: "e2", Room: "general", Name: "big.png"}, append(append([]byte{}, png1x1...), make([]byte, 1000)...), protocol.ErrFileTooLarge, "limit"},
			{protocol.FileHeader{ID: "e3", Room: "general", Name: "empty.png"}, nil, protocol.ErrBadFile, "empty"},
			{protocol.FileHeader{ID: "e4", Room: "elsewhere", Name: "x.png"}, png1x1, protocol.ErrNotMember, "join"},
			{protocol.FileHeader{ID: "e5", To: "nobody", Name: "x.png"}, png1x1, protocol.ErrUserOffline, "not online"},
		} {
			alice.sendFile(tc.h, tc.data)
			e := payloadOf[protocol.Error](t, alice.expect(protocol.TypeError, func(e protocol.Envelope) bool { return e.ID == tc.h.ID }))
			if e.Code != tc.code || !strings.Contains(e.Message, tc.says) {
				t.Fatalf("%s: %+v; want %s saying %q", tc.h.ID, e, tc.code, tc.says)
			}
		}
		bob.expectNone(protocol.TypeChat, nil, quiet)
		alice.roundTrip("still-open")

		_, metrics := get(t, ts.url+"/metrics", nil)
		for _, want := range []string{`tether_files_total{kind="image"} 2`, `tether_files_total{kind="other"} 1`, `tether_files_refused_total{code="bad_file"} 2`} {
			if !strings.Contains(metrics, want) {
				t.Errorf("/metrics lacks %s", want)
			}
		}
	})
}

// TestFilesPrivatelyAndOnResume: a file to a user reaches them (and the
// sender's other tab); one sent while a member is away is replayed on
// resume like any message.
func TestFilesPrivatelyAndOnResume(t *testing.T) {
	bothEngines(t, func(t *testing.T, eng engineCase) {
		ts := newTestServer(t, eng.with(Config{}))
		alice, alice2, bob := connect(t, ts, "alice"), connect(t, ts, "alice"), connect(t, ts, "bob")
		alice.sendFile(protocol.FileHeader{ID: "p1", To: "bob", Name: "dot.png"}, png1x1)
		alice.expect(protocol.TypeAck, isAck("p1"))
		for _, c := range []*client{bob, alice2} {
			if d := payloadOf[protocol.Direct](t, c.expect(protocol.TypeDirect, nil)); d.File == nil || d.File.Name != "dot.png" || d.From != "alice" {
				t.Fatalf("%s got %+v", c.user, d)
			}
		}

		last := payloadOf[protocol.Members](t, connectAndJoinless(t, bob))
		session := bob.welcome.Session
		bob.cut()
		alice.sendFile(protocol.FileHeader{ID: "r1", Room: "general", Name: "while-away.png"}, png1x1)
		alice.expect(protocol.TypeAck, isAck("r1"))
		again := dial(t, resumeURL(ts.ws, "bob", session, map[string][2]any{"general": {last.Epoch, last.Top}})+"&rooms=general")
		again.expectWelcome()
		m := payloadOf[protocol.Chat](t, again.expect(protocol.TypeChat, nil))
		if m.File == nil || m.File.Name != "while-away.png" {
			t.Fatalf("replayed %+v", m)
		}
		r := payloadOf[protocol.Recovered](t, again.expect(protocol.TypeRecovered, isRecovered("general", false)))
		if !r.Recovered || r.Count != 1 {
			t.Fatalf("recovered = %+v", r)
		}
		if resp, body := fetch(t, ts.url+m.File.URL); resp.StatusCode != 200 || !bytes.Equal(body, png1x1) {
			t.Fatalf("GET after the resume: %d", resp.StatusCode)
		}
	})
}

// connectAndJoinless asks who is in general: the reply carries the room's
// position, for a resume.
func connectAndJoinless(t *testing.T, c *client) protocol.Envelope {
	t.Helper()
	return c.who("general")
}

// TestFileLimitsAndAccess: files per minute per user; files off; in token
// mode a file is served only to a token of a user it was for.
func TestFileLimitsAndAccess(t *testing.T) {
	secret := "s3cret"
	ts := newTestServer(t, Config{AuthSecret: secret, FilesPerMinute: 3})
	tok := func(user string, rooms ...string) string {
		s, err := auth.Sign([]byte(secret), auth.Claims{Subject: user, ExpiresAt: time.Now().Add(time.Hour).Unix(), Rooms: rooms})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	alice := dial(t, ts.ws+"/ws?token="+tok("alice"))
	alice.expectWelcome()
	bob := dial(t, ts.ws+"/ws?token="+tok("bob"))
	bob.expectWelcome()
	alice.sendFile(protocol.FileHeader{ID: "a1", To: "bob", Name: "dot.png"}, png1x1)
	alice.expect(protocol.TypeAck, isAck("a1"))
	d := payloadOf[protocol.Direct](t, bob.expect(protocol.TypeDirect, nil))
	alice.sendFile(protocol.FileHeader{ID: "a2", To: "bob", Name: "dot.png"}, png1x1)
	if e := payloadOf[protocol.Error](t, alice.expect(protocol.TypeError, nil)); e.Code != protocol.ErrRateLimited || e.ID != "a2" {
		t.Fatalf("the second file at once: %+v", e)
	}
	for _, tc := range []struct {
		token string
		code  int
	}{
		{"", 401}, {tok("bob"), 200}, {tok("alice"), 200}, {tok("carol"), 403},
	} {
		url := ts.url + d.File.URL
		if tc.token != "" {
			url += "?token=" + tc.token
		}
		if r, _ := fetch(t, url); r.StatusCode != tc.code {
			t.Errorf("GET with %q: %d; want %d", tc.token, r.StatusCode, tc.code)
		}
	}
	if r, _ := fetch(t, ts.url+"/files/0123456789abcdef0123456789abcdef"); r.StatusCode != 404 {
		t.Fatalf("an unknown file: %d", r.StatusCode)
	}

	pics := newTestServer(t, Config{ImagesOnly: true})
	d2 := connect(t, pics, "dora")
	d2.sendFile(protocol.FileHeader{ID: "i1", Room: "general", Name: "notes.txt"}, notAPicture)
	if e := payloadOf[protocol.Error](t, d2.expect(protocol.TypeError, nil)); e.Code != protocol.ErrBadFile || !strings.Contains(e.Message, "not a picture") {
		t.Fatalf("a file that is no picture with --images-only: %+v", e)
	}
	d2.sendFile(protocol.FileHeader{ID: "i2", Room: "general", Name: "dot.png"}, png1x1)
	d2.expect(protocol.TypeAck, isAck("i2"))

	off := newTestServer(t, Config{MaxFileSize: -1})
	c := connect(t, off, "carol")
	if c.welcome.MaxFile != 0 {
		t.Fatalf("max_file with files off = %d", c.welcome.MaxFile)
	}
	c.sendFile(protocol.FileHeader{ID: "x", Room: "general", Name: "dot.png"}, png1x1)
	if e := payloadOf[protocol.Error](t, c.expect(protocol.TypeError, nil)); e.Code != protocol.ErrBadFrame {
		t.Fatalf("a file with files off: %+v", e)
	}
	c.roundTrip("still-open")
}
