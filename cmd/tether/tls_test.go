package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"flag"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/tether-chat/tether/internal/testnet"
	"github.com/tether-chat/tether/protocol"
	"github.com/tether-chat/tether/server"
)

// selfSigned writes a certificate and key for 127.0.0.1 and returns their
// paths and a pool that trusts the certificate.
func selfSigned(t *testing.T) (certPath, keyPath string, pool *x509.CertPool) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "tether test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certPath, keyPath = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	os.WriteFile(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	kb, _ := x509.MarshalECPrivateKey(key)
	os.WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600)
	cert, _ := x509.ParseCertificate(der)
	pool = x509.NewCertPool()
	pool.AddCert(cert)
	return certPath, keyPath, pool
}

func TestServeTLS(t *testing.T) {
	certPath, keyPath, pool := selfSigned(t)
	addr := testnet.FreeAddr(t)
	cmd := exec.Command(tetherBin, "serve", "--addr", addr, "--tls-cert", certPath, "--tls-key", keyPath, "--log-level", "warn")
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()

	d := websocket.Dialer{TLSClientConfig: &tls.Config{RootCAs: pool}}
	var ws *websocket.Conn
	var err error
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if ws, _, err = d.Dial("wss://"+addr+"/ws?user=tls", nil); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("wss dial: %v", err)
		}
	}
	defer ws.Close()
	_, b, err := ws.ReadMessage()
	var env protocol.Envelope
	if err != nil || json.Unmarshal(b, &env) != nil || env.Type != protocol.TypeWelcome {
		t.Fatalf("first message over wss: %s, %v", b, err)
	}
	// Plain ws:// to a TLS port does not get through.
	if _, _, err := websocket.DefaultDialer.Dial("ws://"+addr+"/ws?user=plain", nil); err == nil {
		t.Fatal("a plain-text handshake succeeded on the TLS port")
	}
}

func TestConfigFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "tether.conf")
	os.WriteFile(path, []byte(`# settings
max-text = 77
auto-join = lobby
ping-interval = "3s"
rate-limit = 9
`), 0o600)
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	var cfg server.Config
	var addr, lf, ll string
	var rc redisFlags
	serveFlags(fs, &cfg, &addr, &lf, &ll, &rc)
	fs.Parse([]string{"--rate-limit", "5"})
	env := map[string]string{"TETHER_PING_INTERVAL": "4s"}
	if err := applyEnv(fs, func(k string) string { return env[k] }); err != nil {
		t.Fatal(err)
	}
	if err := applyFile(fs, path, func(k string) string { return env[k] }); err != nil {
		t.Fatal(err)
	}
	if cfg.MaxText != 77 || cfg.AutoJoin != "lobby" || cfg.PingInterval != 4*time.Second || cfg.RateLimit != 5 {
		t.Fatalf("max-text %d auto-join %q ping %s rate %g: the file fills, env and flags win", cfg.MaxText, cfg.AutoJoin, cfg.PingInterval, cfg.RateLimit)
	}
	os.WriteFile(path, []byte("max-txt = 5\n"), 0o600)
	if err := applyFile(fs, path, func(string) string { return "" }); err == nil || !strings.Contains(err.Error(), ":1:") {
		t.Fatalf("unknown setting: err = %v, want one naming the line", err)
	}
	os.WriteFile(path, []byte("\nmax-text = many\n"), 0o600)
	fs2 := flag.NewFlagSet("t", flag.ContinueOnError)
	serveFlags(fs2, &cfg, &addr, &lf, &ll, &rc)
	if err := applyFile(fs2, path, func(string) string { return "" }); err == nil || !strings.Contains(err.Error(), "max-text") {
		t.Fatalf("bad value: err = %v, want one naming max-text", err)
	}
}

func TestPprofOnlyOnItsOwnAddress(t *testing.T) {
	addr, pp := testnet.FreeAddr(t), testnet.FreeAddr(t)
	cmd := exec.Command(tetherBin, "serve", "--addr", addr, "--pprof", pp, "--log-level", "warn")
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	status := func(url string) int {
		r, err := http.Get(url)
		if err != nil {
			return 0
		}
		r.Body.Close()
		return r.StatusCode
	}
	deadline := time.Now().Add(10 * time.Second)
	for status("http://"+pp+"/debug/pprof/") != 200 {
		if time.Now().After(deadline) {
			t.Fatal("pprof not served on its address")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if got := status("http://" + addr + "/debug/pprof/"); got == 200 {
		t.Fatal("pprof is reachable on the public address")
	}
}
