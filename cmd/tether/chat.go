package main

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/tether-chat/tether/client"
	"github.com/tether-chat/tether/protocol"
)

// chatCmd is `tether chat`: a line-based client on the Go SDK.
//
// Typing sends to the current room; /join ROOM (also makes it current),
// /leave ROOM, /dm USER TEXT, /who, /quit. In a terminal a status line
// reports the connection state; messages typed while disconnected are
// marked pending and reported when delivered. In a pipe it reads lines
// from stdin and prints what it receives, one line each (or one JSON
// object each with --json); at the end of input it waits until everything
// it sent was acknowledged.
func chatCmd(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("tether chat", flag.ContinueOnError)
	fs.SetOutput(stderr)
	url := fs.String("url", "ws://127.0.0.1:8000/ws", "server WebSocket URL")
	user := fs.String("user", "", "your name (open mode)")
	room := fs.String("room", protocol.DefaultRoom, "room to start in")
	token := fs.String("token", "", "token (token mode; default $TETHER_TOKEN)")
	asJSON := fs.Bool("json", false, "print one JSON object per received event")
	linger := fs.Duration("wait", 0, "after the end of input (and every send acknowledged), keep printing for this long")
	drain := fs.Duration("drain-timeout", 30*time.Second, "at the end of input, how long to wait for unacknowledged messages")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *token == "" {
		*token = os.Getenv("TETHER_TOKEN")
	}
	if msg := protocol.ValidateRoom(*room); msg != "" {
		fmt.Fprintln(stderr, "tether chat: --room:", msg)
		return 2
	}
	interactive := !*asJSON && isTerminal(stdin)

	c, err := client.New(*url, &client.Options{User: *user, Token: *token})
	if err != nil {
		fmt.Fprintln(stderr, "tether chat:", err)
		return 2
	}
	out := &chatOut{w: stdout, json: *asJSON, interactive: interactive}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	printed := make(chan struct{})
	go func() {
		defer close(printed)
		for ev := range c.Events() {
			if ev.Type == protocol.TypeRecovered && !ev.Recovered.Recovered && ev.Recovered.Room != "" {
				// The gap could not be replayed (e.g. the server restarted):
				// show what its history still has that we have not shown.
				go out.fill(ctx, c, ev.Recovered.Room)
			}
			out.event(c, ev)
		}
	}()
	go func() {
		if err := c.Connect(ctx); err != nil && ctx.Err() == nil {
			out.status(fmt.Sprintf("cannot connect: %v", err))
			stop()
		}
	}()
	if interactive {
		go out.ticker(ctx, c)
	}

	current := *room
	var pending sync.WaitGroup
	track := func(p *client.Pending, err error, what string) {
		if err != nil {
			out.status(fmt.Sprintf("not sent: %v", err))
			return
		}
		queued := c.State() != client.StateOpen
		if queued && interactive {
			out.status(fmt.Sprintf("(pending) %s — will be sent after the reconnect", what))
		}
		pending.Add(1)
		go func() {
			defer pending.Done()
			ack, err := p.Wait(context.Background())
			switch {
			case err != nil:
				out.status(fmt.Sprintf("not delivered: %s: %v", what, err))
			case queued && interactive:
				out.status(fmt.Sprintf("(sent #%d) %s", ack.Seq, what))
			}
		}()
	}
	if current != protocol.DefaultRoom {
		go c.Join(ctx, current)
	}

	lines := make(chan string)
	go func() {
		sc := bufio.NewScanner(stdin)
		sc.Buffer(make([]byte, 64<<10), 64<<10)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
input:
	for {
		var line string
		select {
		case <-ctx.Done():
			break input
		case l, ok := <-lines:
			if !ok {
				break input
			}
			line = strings.TrimSpace(l)
		}
		if line == "" {
			continue
		}
		cmd, rest, _ := strings.Cut(line, " ")
		switch cmd {
		case "/quit":
			break input
		case "/join":
			current = strings.TrimSpace(rest)
			go func(r string) {
				if err := c.Join(ctx, r); err != nil {
					out.status(fmt.Sprintf("cannot join %s: %v", r, err))
				} else if interactive {
					out.status("now in #" + r)
				}
			}(current)
		case "/leave":
			r := strings.TrimSpace(rest)
			go func() {
				if err := c.Leave(ctx, r); err != nil {
					out.status(fmt.Sprintf("cannot leave %s: %v", r, err))
				}
			}()
		case "/dm":
			to, text, _ := strings.Cut(strings.TrimSpace(rest), " ")
			p, err := c.DirectAsync(to, text)
			track(p, err, "@"+to+" "+text)
		case "/who":
			go func(r string) {
				m, err := c.Who(ctx, r)
				if err != nil {
					out.status(fmt.Sprintf("who: %v", err))
					return
				}
				out.members(m)
			}(current)
		default:
			if strings.HasPrefix(cmd, "/") {
				out.status("commands: /join ROOM, /leave ROOM, /dm USER TEXT, /who, /quit")
				continue
			}
			p, err := c.SendAsync(current, line)
			track(p, err, "#"+current+" "+line)
		}
	}

	// End of input: everything typed is delivered before we go.
	done := make(chan struct{})
	go func() { pending.Wait(); close(done) }()
	code := 0
	select {
	case <-done:
	case <-time.After(*drain):
		out.status(fmt.Sprintf("%d messages still unacknowledged after %s", c.Info().Pending, *drain))
		code = 1
	case <-ctx.Done():
	}
	if *linger > 0 {
		select {
		case <-time.After(*linger):
		case <-ctx.Done():
		}
	}
	c.Close()
	<-printed
	return code
}

// chatOut prints events, one line each, from several goroutines.
type chatOut struct {
	mu          sync.Mutex
	w           io.Writer
	json        bool
	interactive bool
	lastState   string
	seen        map[string]bool // "room epoch seq" of messages shown
}

// firstTime reports whether a room message has not been shown yet.
func (o *chatOut) firstTime(m *protocol.Chat) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.seen == nil {
		o.seen = map[string]bool{}
	}
	k := fmt.Sprint(m.Room, " ", m.Epoch, " ", m.Seq)
	if o.seen[k] {
		return false
	}
	o.seen[k] = true
	return true
}

func (o *chatOut) fill(ctx context.Context, c *client.Client, room string) {
	page, err := c.History(ctx, room, 0, 0, 50)
	if err != nil {
		return
	}
	for i := range page.Messages {
		o.event(c, client.Event{Type: protocol.TypeChat, Chat: &page.Messages[i]})
	}
}

func (o *chatOut) line(s string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.interactive {
		fmt.Fprint(o.w, "\r\033[K") // clear a status line in progress
	}
	fmt.Fprintln(o.w, s)
}

func (o *chatOut) status(s string) {
	if o.json {
		b, _ := json.Marshal(map[string]string{"type": "status", "text": s})
		o.line(string(b))
		return
	}
	o.line("-- " + s)
}

func (o *chatOut) members(m protocol.Members) {
	if o.json {
		b, _ := json.Marshal(map[string]any{"type": protocol.TypeMembers, "payload": m})
		o.line(string(b))
		return
	}
	more := ""
	if m.Truncated {
		more = ", …"
	}
	o.line(fmt.Sprintf("-- in #%s (%d): %s%s", m.Room, m.Count, strings.Join(m.Users, ", "), more))
}

func (o *chatOut) event(c *client.Client, ev client.Event) {
	if ev.Chat != nil && !o.firstTime(ev.Chat) {
		return
	}
	if o.json {
		var payload any
		switch {
		case ev.State != nil:
			payload = ev.State
		case ev.Welcome != nil:
			payload = ev.Welcome
		case ev.Chat != nil:
			payload = ev.Chat
		case ev.Direct != nil:
			payload = ev.Direct
		case ev.Presence != nil:
			payload = ev.Presence
		case ev.Members != nil:
			payload = ev.Members
		case ev.Left != nil:
			payload = ev.Left
		case ev.Recovered != nil:
			payload = ev.Recovered
		case ev.History != nil:
			payload = ev.History
		case ev.Error != nil:
			payload = ev.Error
		}
		b, _ := json.Marshal(map[string]any{"type": ev.Type, "payload": payload})
		o.line(string(b))
		return
	}
	switch ev.Type {
	case "state":
		s := ev.State
		msg := fmt.Sprintf("%s (%s)", s.State, s.Reason)
		if s.State == client.StateOpen {
			msg = fmt.Sprintf("OPEN as %s", c.Info().User)
		}
		o.mu.Lock()
		o.lastState = string(s.State)
		o.mu.Unlock()
		o.status(msg)
	case protocol.TypeChat:
		o.line(fmt.Sprintf("[%s] %s: %s", ev.Chat.Room, ev.Chat.From, ev.Chat.Text))
	case protocol.TypeDirect:
		o.line(fmt.Sprintf("[dm] %s -> %s: %s", ev.Direct.From, ev.Direct.To, ev.Direct.Text))
	case protocol.TypePresence:
		p := ev.Presence
		if p.Action == protocol.PresenceCount {
			o.line(fmt.Sprintf("* #%s: %d here", p.Room, p.Count))
		} else {
			verb := map[string]string{protocol.PresenceJoin: "joined", protocol.PresenceLeave: "left"}[p.Action]
			o.line(fmt.Sprintf("* %s %s #%s (%d here)", p.User, verb, p.Room, p.Count))
		}
	case protocol.TypeLeft:
		o.line(fmt.Sprintf("* %s left the private chat", ev.Left.User))
	case protocol.TypeRecovered:
		r := ev.Recovered
		if !r.Recovered && o.interactive {
			o.status(fmt.Sprintf("%s: what was missed could not be replayed (the server restarted, or the gap is older than its history); showing its history", streamName(r)))
		}
	case protocol.TypeError:
		o.status(fmt.Sprintf("error %s: %s", ev.Error.Code, ev.Error.Message))
	}
}

func streamName(r *protocol.Recovered) string {
	if r.Inbox {
		return "your private messages"
	}
	return "#" + r.Room
}

// ticker keeps a status line current while reconnecting: the attempt and
// the time to the next try.
func (o *chatOut) ticker(ctx context.Context, c *client.Client) {
	t := time.NewTicker(500 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		info := c.Info()
		if info.State != client.StateReconnecting || info.NextRetry.IsZero() {
			continue
		}
		o.mu.Lock()
		fmt.Fprintf(o.w, "\r\033[K-- RECONNECTING attempt %d, next try in %.1fs, %d pending",
			info.Attempt, max(0, time.Until(info.NextRetry).Seconds()), info.Pending)
		o.mu.Unlock()
	}
}

func isTerminal(r io.Reader) bool {
	f, ok := r.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}
