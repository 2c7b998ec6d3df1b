package main

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tether-chat/tether/internal/testnet"
)

// TestREADMEGoSnippet runs the README's Go snippet as it is written (only
// the server's address changes): it must compile against the SDK as it is
// and print what a reader expects.
func TestREADMEGoSnippet(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	blocks := regexp.MustCompile("(?s)```go\n(.*?)```").FindAllSubmatch(readme, -1)
	if len(blocks) != 1 {
		t.Fatalf("the README has %d Go blocks; this test runs the one", len(blocks))
	}
	addr := testnet.FreeAddr(t)
	startServerProc(t, addr)
	snippet := strings.ReplaceAll(string(blocks[0][1]), "ws://127.0.0.1:8000/ws", "ws://"+addr+"/ws")
	program := `package main

import (
	"context"
	"fmt"
	"log"

	"github.com/tether-chat/tether/client"
)

func main() {
	ctx := context.Background()
` + snippet + "}\n"
	// Inside the module, so that the import resolves to this checkout.
	dir, err := os.MkdirTemp("../..", ".readme-snippet-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.WriteFile(filepath.Join(dir, "main.go"), []byte(program), 0o644); err != nil {
		t.Fatal(err)
	}
	build := exec.Command("go", "build", "-o", "snippet", ".")
	build.Dir = dir
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("the README's Go snippet does not compile: %v\n%s", err, out)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(dir, "snippet"))
	var out lockedBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	waitFor := func(want string) {
		for !strings.Contains(out.String(), want) && ctx.Err() == nil {
			time.Sleep(50 * time.Millisecond)
		}
	}
	waitFor("#ops alice: deploying v2 (seq 1)")
	// Someone else's message: printed with its own seq, not alice's ack's.
	if code, o := runChat(t, "second\n", "--url", "ws://"+addr+"/ws", "--user", "bob", "--room", "ops"); code != 0 {
		t.Fatalf("bob: exit %d: %s", code, o)
	}
	waitFor("#ops bob: second (seq 2)")
	cmd.Process.Kill() // the snippet reads events for ever
	cmd.Wait()
	got := out.String()
	for _, want := range []string{"acknowledged as seq 1", "#ops alice: deploying v2 (seq 1)", "#ops bob: second (seq 2)"} {
		if !strings.Contains(got, want) {
			t.Fatalf("the README's Go snippet printed:\n%s\nwant %q", got, want)
		}
	}
}

// lockedBuffer is a bytes.Buffer that a process writes while a test reads.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestLayoutMatchesTheTree: the README's Layout names directories that
// exist and files that exist, and every file of server/ (tests aside) is
// named in exactly one layer there and in docs/architecture.md's table.
func TestLayoutMatchesTheTree(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	arch, err := os.ReadFile("../../docs/architecture.md")
	if err != nil {
		t.Fatal(err)
	}
	layout := regexp.MustCompile("(?s)## Layout\n.*?```\n(.*?)```").FindSubmatch(readme)
	if layout == nil {
		t.Fatal("no Layout block in the README")
	}
	for _, line := range strings.Split(string(layout[1]), "\n") {
		if f := strings.Fields(line); len(f) > 0 && strings.HasSuffix(f[0], "/") {
			if st, err := os.Stat(filepath.Join("../..", f[0])); err != nil || !st.IsDir() {
				t.Errorf("the Layout names %s, which is not a directory", f[0])
			}
		}
	}
	var files []string
	entries, _ := os.ReadDir("../../server")
	for _, e := range entries {
		if n := e.Name(); strings.HasSuffix(n, ".go") && !strings.HasSuffix(n, "_test.go") {
			files = append(files, n)
		}
	}
	layers := regexp.MustCompile(`(?m)^\s+(transport|session|hub|node)\s+(.*)$`).FindAllSubmatch(layout[1], -1)
	table := regexp.MustCompile(`(?m)^\| (transport|session|hub|node) \| (.*?) \|`).FindAllSubmatch(arch, -1)
	for _, doc := range []struct {
		name string
		rows [][][]byte
	}{{"README", layers}, {"docs/architecture.md", table}} {
		seen := map[string]string{}
		for _, row := range doc.rows {
			for _, f := range regexp.MustCompile(`[a-z_]+\.go`).FindAll(row[2], -1) {
				if prev, ok := seen[string(f)]; ok {
					t.Errorf("%s: %s is in %s and in %s", doc.name, f, prev, row[1])
				}
				seen[string(f)] = string(row[1])
				if _, err := os.Stat(filepath.Join("../../server", string(f))); err != nil {
					t.Errorf("%s names server/%s, which does not exist", doc.name, f)
				}
			}
		}
		for _, f := range files {
			if _, ok := seen[f]; !ok {
				t.Errorf("%s: server/%s is in no layer", doc.name, f)
			}
		}
	}
}

// TestLayersImportDownward keeps docs/architecture.md's promise that
// dependencies point one way: each layer imports only the layers below
// it (and the standard library and third-party modules).
func TestLayersImportDownward(t *testing.T) {
	const mod = "github.com/tether-chat/tether/"
	allowed := map[string][]string{
		"internal/ws":      {},
		"internal/netpoll": {},
		"protocol":         {},
		"engine":           {},
		"internal/bucket":  {},
		"server/transport": {"internal/ws", "internal/netpoll", "protocol"},
		"server/hub":       {"server/transport", "engine", "protocol"},
		"server/session":   {"server/hub", "server/transport", "engine", "protocol", "auth", "internal/ws", "internal/bucket", "internal/netpoll"},
	}
	out, err := exec.Command("go", "list", "-f", `{{.ImportPath}} {{join .Imports " "}}`, "../../...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	seen := 0
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.Fields(line)
		pkg, ok := strings.CutPrefix(f[0], mod)
		may, layered := allowed[pkg]
		if !ok || !layered {
			continue
		}
		seen++
		for _, imp := range f[1:] {
			if dep, ours := strings.CutPrefix(imp, mod); ours && !slices.Contains(may, dep) {
				t.Errorf("%s imports %s: it may import only %v of Tether's", pkg, dep, may)
			}
		}
	}
	if seen != len(allowed) {
		t.Fatalf("found %d of the %d layered packages in go list's output:\n%s", seen, len(allowed), out)
	}
}

// TestDocsNameFilesThatExist: every Go file of the server or of internal/
// that the README or docs/ name by path is there (files move when layers
// do).
func TestDocsNameFilesThatExist(t *testing.T) {
	docs, _ := filepath.Glob("../../docs/*.md")
	docs = append(docs, "../../README.md")
	path := regexp.MustCompile(`\b(?:server|internal)/[a-z0-9_/]*\.go\b`)
	named := 0
	for _, d := range docs {
		b, err := os.ReadFile(d)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range path.FindAllString(string(b), -1) {
			named++
			if _, err := os.Stat(filepath.Join("../..", p)); err != nil {
				t.Errorf("%s names %s, which does not exist", filepath.Base(d), p)
			}
		}
	}
	if named == 0 {
		t.Fatal("no file paths found in the docs: the pattern is wrong")
	}
}
