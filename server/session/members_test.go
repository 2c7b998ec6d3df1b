package session

import (
	"encoding/json"
	"testing"

	"github.com/tether-chat/tether/protocol"
	"github.com/tether-chat/tether/server/hub"
)

func TestMembersFrameIsTheProtocolsMembers(t *testing.T) {
	users := hub.Listing{JSON: []byte(`["ann","李雷"]`), Listed: 2}
	b := membersFrame(`we"ird\id`, "ops", users, 5, roomPos{epoch: "e1", top: 42})
	var env protocol.Envelope
	if err := json.Unmarshal(b, &env); err != nil {
		t.Fatalf("%s: %v", b, err)
	}
	var m protocol.Members
	if err := json.Unmarshal(env.Payload, &m); err != nil {
		t.Fatal(err)
	}
	if env.Type != protocol.TypeMembers || env.ID != `we"ird\id` || m.Room != "ops" || m.Count != 5 || !m.Truncated ||
		len(m.Users) != 2 || m.Users[1] != "李雷" || m.Epoch != "e1" || m.Top != 42 {
		t.Fatalf("decoded %+v %+v from %s", env, m, b)
	}
}
