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
	"sync/atomic"
	"syscall"
	"time"

	"github.com/tether-chat/tether/client"
	"github.com/tether-chat/tether/protocol"
)

const chatAbout = `Usage: tether chat [flags]

A chat client in the terminal, on the Go SDK: it reconnects by itself,
keeps what you type while disconnected and sends it after the reconnect.

Typing a line sends it to the current room. Commands:
  /join ROOM       join ROOM and make it the current room
  /leave ROOM      leave ROOM
  /dm USER TEXT    a private message to USER
  /who             who is in the current room
  /help            this list
  /quit            leave (also: end of input, Ctrl-D)

In a pipe it joins --room, sends each line of its input there (the same
commands work), prints what it receives, one line each (--json: one JSON
object each), and at the end of its input waits until every line was
acknowledged. The exit status says whether everything was delivered:
0 yes, 1 no (a message refused, unacknowledged, or no connection), 2 bad
flags. Example:

  printf 'deploy finished\n' | tether chat --user ci --room ops
`

// chatCmd is `tether chat`.
func chatCmd(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("tether chat", flag.ContinueOnError)
	url := fs.String("url", "ws://127.0.0.1:8000/ws", "server WebSocket `URL`")
	user := fs.String("user", "", "your `name` (open mode)")
	room := fs.String("room", protocol.DefaultRoom, "`room` to start in")
	token := fs.String("token", "", "`token` (token mode; default $TETHER_TOKEN)")
	asJSON := fs.Bool("json", false, "print one JSON object per received event")
	linger := fs.Duration("wait", 0, "after the end of input (and every send acknowledged), keep printing for this long")
	drain := fs.Duration("drain-timeout", 30*time.Second, "at the end of input, how long to wait for unacknowledged messages")
	connectTimeout := fs.Duration("connect-timeout", 30*time.Second, "in a pipe: give up (exit 1) when no connection is made within this long")
	if code, ok := parseFlags(fs, args, chatAbout, stdout, stderr); !ok {
		return code
	}
	if *token == "" {
		*token = os.Getenv("TETHER_TOKEN")
	}
	if msg := protocol.ValidateRoom(*room); msg != "" {
		fmt.Fprintln(stderr, "tether chat: --room:", msg)
		return 2
	}
	c, err := client.New(*url, &client.Options{User: *user, Token: *token})
	if err != nil {
		fmt.Fprintln(stderr, "tether chat:", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	s := &chatSession{c: c, out: &chatOut{w: stdout, json: *asJSON, interactive: !*asJSON && isTerminal(stdin)},
		current: *room, ctx: ctx}
	printed := make(chan struct{})
	go func() { defer close(printed); s.print() }()
	defer func() { c.Close(); <-printed }()

	connected := make(chan error, 1)
	go func() { connected <- c.Connect(ctx) }()
	if !s.out.interactive {
		// A pipe sends nothing before it is connected and in its room:
		// otherwise the first line could reach the server before the join.
		if err := s.start(connected, *connectTimeout); err != nil {
			s.out.status(err.Error())
			return 1
		}
	} else {
		go func() {
			if err := <-connected; err != nil && ctx.Err() == nil {
				s.out.status(fmt.Sprintf("cannot connect: %v", err))
				stop()
			}
		}()
		p, err := c.JoinAsync(*room) // queued before anything typed
		s.track(p, err, "join #"+*room, false)
	}
	s.read(stdin)
	return s.finish(*drain, *linger)
}

// chatSession is one run of `tether chat`.
type chatSession struct {
	c       *client.Client
	out     *chatOut
	ctx     context.Context
	current string         // the room typed lines go to
	pending sync.WaitGroup // sends waiting for their ack
	failed  atomic.Int32   // sends refused or never acknowledged
}

// start waits until the client is connected and has joined the room.
func (s *chatSession) start(connected <-chan error, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(s.ctx, timeout)
	defer cancel()
	select {
	case err := <-connected:
		if err != nil {
			return fmt.Errorf("cannot connect: %w", err)
		}
	case <-ctx.Done():
		why := "no answer"
		if last := s.c.Info().LastClose; last != nil {
			why = last.Reason
		}
		return fmt.Errorf("cannot connect within %s: %s", timeout, why)
	}
	if err := s.c.Join(ctx, s.current); err != nil {
		return fmt.Errorf("cannot join #%s: %w", s.current, err)
	}
	return nil
}

// read handles input lines until its end, /quit or a signal.
func (s *chatSession) read(stdin io.Reader) {
	lines := make(chan string)
	go func() {
		sc := bufio.NewScanner(stdin)
		sc.Buffer(make([]byte, 64<<10), 64<<10)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	for {
		select {
		case <-s.ctx.Done():
			return
		case l, ok := <-lines:
			if !ok || !s.line(strings.TrimSpace(l)) {
				return
			}
		}
	}
}

// line handles one input line; false means /quit.
func (s *chatSession) line(line string) bool {
	if line == "" {
		return true
	}
	cmd, rest, _ := strings.Cut(line, " ")
	rest = strings.TrimSpace(rest)
	switch cmd {
	case "/quit":
		return false
	case "/help":
		s.out.status("commands: /join ROOM, /leave ROOM, /dm USER TEXT, /who, /help, /quit")
	case "/join":
		if rest == "" {
			s.out.status("usage: /join ROOM")
			return true
		}
		s.current = rest
		p, err := s.c.JoinAsync(rest)
		s.track(p, err, "join #"+rest, false)
	case "/leave":
		if rest == "" {
			s.out.status("usage: /leave ROOM")
			return true
		}
		go func() {
			if err := s.c.Leave(s.ctx, rest); err != nil {
				s.out.status(fmt.Sprintf("cannot leave #%s: %v", rest, err))
			}
		}()
	case "/dm":
		to, text, _ := strings.Cut(rest, " ")
		if to == "" || strings.TrimSpace(text) == "" {
			s.out.status("usage: /dm USER TEXT")
			return true
		}
		p, err := s.c.DirectAsync(to, text)
		s.track(p, err, "@"+to+" "+text, true)
	case "/who":
		room := s.current
		go func() {
			m, err := s.c.Who(s.ctx, room)
			if err != nil {
				s.out.status(fmt.Sprintf("who: %v", err))
				return
			}
			s.out.members(m)
		}()
	default:
		if strings.HasPrefix(cmd, "/") {
			s.out.status(fmt.Sprintf("unknown command %s: /join ROOM, /leave ROOM, /dm USER TEXT, /who, /help, /quit", cmd))
			return true
		}
		p, err := s.c.SendAsync(s.current, line)
		s.track(p, err, "#"+s.current+" "+line, false)
	}
	return true
}

// track follows a queued message to its ack. A message that is refused is
// reported and counted (the exit status); a private message is confirmed
// when acked (the sender gets no copy of it).
func (s *chatSession) track(p *client.Pending, err error, what string, confirm bool) {
	if err != nil {
		s.failed.Add(1)
		s.out.status(fmt.Sprintf("not sent: %s: %v", what, err))
		return
	}
	queued := s.c.State() != client.StateOpen
	if queued && s.out.interactive {
		s.out.status(fmt.Sprintf("(pending) %s — will be sent after the reconnect", what))
	}
	s.pending.Add(1)
	go func() {
		defer s.pending.Done()
		ack, err := p.Wait(context.Background())
		switch {
		case err != nil:
			s.failed.Add(1)
			s.out.status(fmt.Sprintf("not delivered: %s: %v", what, err))
		case confirm:
			s.out.sent(what, ack.Seq)
		case queued && s.out.interactive:
			s.out.status(fmt.Sprintf("(sent #%d) %s", ack.Seq, what))
		}
	}()
}

// finish waits, at the end of input, until everything typed was
// acknowledged (or drain passes), and returns the exit status.
func (s *chatSession) finish(drain, linger time.Duration) int {
	done := make(chan struct{})
	go func() { s.pending.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(drain):
		s.out.status(fmt.Sprintf("%d messages still unacknowledged after %s", s.c.Info().Pending, drain))
		s.failed.Add(1)
	case <-s.ctx.Done():
	}
	if linger > 0 {
		select {
		case <-time.After(linger):
		case <-s.ctx.Done():
		}
	}
	if s.failed.Load() > 0 {
		return 1
	}
	return 0
}

// print shows every event of the client until its Events channel closes.
func (s *chatSession) print() {
	for ev := range s.c.Events() {
		if ev.Type == protocol.TypeRecovered && !ev.Recovered.Recovered && ev.Recovered.Room != "" {
			// The gap could not be replayed (e.g. the server restarted):
			// show what its history still has that we have not shown.
			go s.out.fill(s.ctx, s.c, ev.Recovered.Room)
		}
		s.out.event(s.c, ev)
	}
}

// chatOut prints events, one line each, from several goroutines.
type chatOut struct {
	mu          sync.Mutex
	w           io.Writer
	json        bool
	interactive bool
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

// sent confirms a private message to its sender.
func (o *chatOut) sent(what string, seq uint64) {
	if o.json {
		b, _ := json.Marshal(map[string]any{"type": "sent", "text": what, "seq": seq})
		o.line(string(b))
		return
	}
	o.line(fmt.Sprintf("-- (sent) %s", what))
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
		b, _ := json.Marshal(map[string]any{"type": ev.Type, "payload": eventPayload(ev)})
		o.line(string(b))
		return
	}
	switch ev.Type {
	case "state":
		s := ev.State
		if s.State == client.StateReconnecting {
			return // the reconnect event says more
		}
		msg := fmt.Sprintf("%s (%s)", s.State, s.Reason)
		if s.State == client.StateOpen {
			msg = fmt.Sprintf("OPEN as %s", c.Info().User)
		}
		o.status(msg)
	case "reconnect":
		r := ev.Reconnect
		why := fmt.Sprint(r.Code)
		if r.Reason != "" {
			why += ": " + r.Reason
		}
		o.status(fmt.Sprintf("RECONNECTING attempt %d, next try in %.1fs, %d pending (closed with %s)",
			r.Attempt, r.Delay.Seconds(), c.Info().Pending, why))
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

// eventPayload is the one field of ev that is set.
func eventPayload(ev client.Event) any {
	switch {
	case ev.State != nil:
		return ev.State
	case ev.Reconnect != nil:
		return ev.Reconnect
	case ev.Welcome != nil:
		return ev.Welcome
	case ev.Chat != nil:
		return ev.Chat
	case ev.Direct != nil:
		return ev.Direct
	case ev.Presence != nil:
		return ev.Presence
	case ev.Members != nil:
		return ev.Members
	case ev.Left != nil:
		return ev.Left
	case ev.Recovered != nil:
		return ev.Recovered
	case ev.History != nil:
		return ev.History
	case ev.Error != nil:
		return ev.Error
	}
	return nil
}

func streamName(r *protocol.Recovered) string {
	if r.Inbox {
		return "your private messages"
	}
	return "#" + r.Room
}

func isTerminal(r io.Reader) bool {
	f, ok := r.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}
