package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/tether-chat/tether/auth"
	"github.com/tether-chat/tether/protocol"
)

// tokenCmd prints a signed token:
//
//	tether token --user alice --ttl 1h [--rooms general,ops]
//
// The secret comes from --auth-secret or TETHER_AUTH_SECRET, like the
// server's.
const tokenAbout = `Usage: tether token --user NAME [flags]

Prints an HS256 token for a server in token mode (the same secret as its
--auth-secret): for testing, and as an example of what your backend signs.
`

func tokenCmd(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("tether token", flag.ContinueOnError)
	user := fs.String("user", "", "the token's subject (required)")
	ttl := fs.Duration("ttl", time.Hour, "how long the token is valid")
	rooms := fs.String("rooms", "", "comma-separated rooms the user may join (empty: any)")
	secret := fs.String("auth-secret", "", "signing secret (default: $TETHER_AUTH_SECRET)")
	if code, ok := parseFlags(fs, args, tokenAbout, stdout, stderr); !ok {
		return code
	}
	if *secret == "" {
		*secret = os.Getenv("TETHER_AUTH_SECRET")
	}
	if *secret == "" {
		fmt.Fprintln(stderr, "tether token: no secret: pass --auth-secret or set TETHER_AUTH_SECRET")
		return 2
	}
	if msg := protocol.ValidateUser(*user); msg != "" {
		fmt.Fprintln(stderr, "tether token: --user:", msg)
		return 2
	}
	if *ttl <= 0 {
		fmt.Fprintln(stderr, "tether token: --ttl must be positive")
		return 2
	}
	c := auth.Claims{Subject: *user, IssuedAt: time.Now().Unix(), ExpiresAt: time.Now().Add(*ttl).Unix()}
	if *rooms != "" {
		for _, r := range strings.Split(*rooms, ",") {
			r = strings.TrimSpace(r)
			if msg := protocol.ValidateRoom(r); msg != "" {
				fmt.Fprintf(stderr, "tether token: --rooms: %q: %s\n", r, msg)
				return 2
			}
			c.Rooms = append(c.Rooms, r)
		}
	}
	tok, err := auth.Sign([]byte(*secret), c)
	if err != nil {
		fmt.Fprintln(stderr, "tether token:", err)
		return 1
	}
	fmt.Fprintln(stdout, tok)
	return 0
}
