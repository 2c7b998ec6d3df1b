// Package web holds the browser assets served by the tether binary: the
// chat UI (chat/) and the browser SDK (sdk/), embedded so that one binary
// serves everything with no build step.
package web

import "embed"

// FS holds chat/ and sdk/.
//
//go:embed chat sdk
var FS embed.FS
