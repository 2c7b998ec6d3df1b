// Package web holds the browser assets served by the tether binary: the
// chat UI (chat/), the browser SDK (sdk/) and the admin page (admin/), embedded so that one binary
// serves everything with no build step.
package web

import "embed"

// FS holds chat/, sdk/ and admin/ (the admin page).
//
//go:embed chat sdk admin
var FS embed.FS
