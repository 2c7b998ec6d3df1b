package engine

import "testing"

func TestHistoryCovers(t *testing.T) {
	h := History{Epoch: "e1", Top: 10, Oldest: 4} // seqs 4..10 retained
	fresh := History{Epoch: "e2", Top: 3, Oldest: 1}
	empty := History{Top: 0, Oldest: 1}
	for _, tc := range []struct {
		name  string
		h     History
		epoch string
		seq   uint64
		want  bool
	}{
		{"up to date", h, "e1", 10, true},
		{"missed the retained ones", h, "e1", 3, true},
		{"missed one no longer retained", h, "e1", 2, false},
		{"ahead of the stream", h, "e1", 11, false},
		{"another epoch", h, "e0", 10, false},
		{"nothing seen, history from seq 1", fresh, "", 0, true},
		{"nothing seen, history trimmed", h, "", 0, false},
		{"nothing seen, nothing published", empty, "", 0, true},
		{"a position in an epoch that is gone", empty, "e1", 5, false},
		{"(\"\", n) is no position", fresh, "", 2, false},
	} {
		if got := tc.h.Covers(tc.epoch, tc.seq); got != tc.want {
			t.Errorf("%s: Covers(%q, %d) = %v, want %v", tc.name, tc.epoch, tc.seq, got, tc.want)
		}
	}
}

// TestPartner: the other party of a private message in a user's inbox.
func TestPartner(t *testing.T) {
	for _, tc := range []struct{ from, to, inbox, want string }{
		{"ann", "ben", "ben", "ann"}, // the recipient's inbox: the sender
		{"ann", "ben", "ann", "ben"}, // the sender's copy: the recipient
		{"cid", "cid", "cid", ""},    // a note to oneself: nobody
	} {
		p := &Publication{Stream: UserStream(tc.inbox), Type: "direct", From: tc.from, To: tc.to}
		if got := p.Partner(tc.inbox); got != tc.want {
			t.Errorf("%s→%s in %s's inbox: partner %q, want %q", tc.from, tc.to, tc.inbox, got, tc.want)
		}
	}
}
