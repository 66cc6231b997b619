package tokenvend_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"

	tokenvend "github.com/tokenvend/tokenvend/client/go"
	"github.com/tokenvend/tokenvend/client/go/tokenvendpb"
)

// recorder counts a client's GetToken RPCs and keeps what each asked for.
type recorder struct {
	mu   sync.Mutex
	reqs []recorded
}

type recorded struct {
	at       time.Time
	minTTL   bool
	rejected bool
}

// Load returns the number of GetToken RPCs so far.
func (r *recorder) Load() int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return int64(len(r.reqs))
}

func (r *recorder) requests() []recorded {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]recorded(nil), r.reqs...)
}

// newClient returns a client of the shared --dev server and a recorder of its RPCs.
func newClient(t *testing.T, opts ...tokenvend.Option) (*tokenvend.Client, *recorder) {
	t.Helper()
	return newClientOf(t, target, opts...)
}

func newClientOf(t *testing.T, addr string, opts ...tokenvend.Option) (*tokenvend.Client, *recorder) {
	t.Helper()
	rec := &recorder{}
	count := func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn,
		invoke grpc.UnaryInvoker, callOpts ...grpc.CallOption) error {
		if r, ok := req.(*tokenvendpb.GetTokenRequest); ok {
			rec.mu.Lock()
			rec.reqs = append(rec.reqs, recorded{
				at:       time.Now(),
				minTTL:   r.GetMinTtl() != nil,
				rejected: r.GetRejectedToken() != "",
			})
			rec.mu.Unlock()
		}
		return invoke(ctx, method, req, reply, cc, callOpts...)
	}
	opts = append(opts, tokenvend.WithDialOptions(grpc.WithUnaryInterceptor(count)))
	c, err := tokenvend.NewClient(addr, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c, rec
}

// issuer is a stand-in OAuth 2.0 token endpoint (client_secret_post) for servers started
// with a configuration of the test's own: each client id is a profile, with the token
// lifetime it was registered with, and the issuer counts the tokens it hands out.
type issuer struct {
	*httptest.Server
	mu        sync.Mutex
	lifetimes map[string]time.Duration
	refusing  map[string]bool // answer 503 from the second request on
	issued    map[string]int
}

func newIssuer(t *testing.T) *issuer {
	is := &issuer{
		lifetimes: map[string]time.Duration{},
		refusing:  map[string]bool{},
		issued:    map[string]int{},
	}
	is.Server = httptest.NewServer(http.HandlerFunc(is.token))
	t.Cleanup(is.Close)
	return is
}

// profile registers a client id; its tokens live lifetime.
func (is *issuer) profile(name string, lifetime time.Duration) {
	is.mu.Lock()
	defer is.mu.Unlock()
	is.lifetimes[name] = lifetime
}

// refuseAfterFirst makes the issuer fail every request of name after the first one, so
// that tokenvend cannot replace that token.
func (is *issuer) refuseAfterFirst(name string) {
	is.mu.Lock()
	defer is.mu.Unlock()
	is.refusing[name] = true
}

func (is *issuer) count(name string) int {
	is.mu.Lock()
	defer is.mu.Unlock()
	return is.issued[name]
}

func (is *issuer) token(w http.ResponseWriter, r *http.Request) {
	_ = r.ParseForm()
	id := r.PostForm.Get("client_id")
	is.mu.Lock()
	lifetime, ok := is.lifetimes[id]
	refuse := is.refusing[id] && is.issued[id] > 0
	if ok && !refuse {
		is.issued[id]++
	}
	is.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	switch {
	case !ok || r.PostForm.Get("client_secret") != "issuer-secret":
		w.WriteHeader(http.StatusUnauthorized)
		_, _ = w.Write([]byte(`{"error":"invalid_client"}`))
	case refuse:
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = w.Write([]byte(`{"error":"temporarily_unavailable"}`))
	default:
		b := make([]byte, 24)
		_, _ = rand.Read(b)
		_ = json.NewEncoder(w).Encode(map[string]any{
			"access_token": id + "-" + hex.EncodeToString(b),
			"token_type":   "Bearer",
			"expires_in":   int(lifetime / time.Second),
		})
	}
}

// profileYAML is a profile of the issuer in tokenvend's configuration. Every report of a
// token replaces it, so that the 401 paths can be driven report after report.
func (is *issuer) profileYAML(t *testing.T, name string, extra ...string) string {
	secret := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(secret, []byte("issuer-secret"), 0o600); err != nil {
		t.Fatal(err)
	}
	lines := []string{
		"  " + name + ":",
		"    token_url: " + is.URL + "/token",
		"    client_id: " + name,
		"    client_secret: { file: " + secret + " }",
		"    rejected_token_min_interval: 0s",
	}
	for _, e := range extra {
		lines = append(lines, "    "+e)
	}
	return strings.Join(lines, "\n") + "\n"
}

// server is a tokenvend started by a test with a configuration of its own.
type server struct {
	addr, admin string
	cmd         *exec.Cmd
	done        chan struct{}
	log         string
}

// startServer runs `tokenvend serve --config` with the given configuration on addr (a
// free port if empty) and waits until it is ready. It is stopped when the test ends.
func startServer(t *testing.T, config, addr string) *server {
	t.Helper()
	dir := t.TempDir()
	path := filepath.Join(dir, "tokenvend.yaml")
	if err := os.WriteFile(path, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	if addr == "" {
		addr = freeAddr()
	}
	s := &server{addr: addr, admin: freeAddr(), log: filepath.Join(dir, "server.log"), done: make(chan struct{})}
	logFile, err := os.Create(s.log)
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()
	s.cmd = exec.Command(tokenvendBin(), "serve", "--config", path, "--listen", s.addr,
		"--admin-listen", s.admin)
	s.cmd.Stdout, s.cmd.Stderr = logFile, logFile
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = s.cmd.Wait(); close(s.done) }()
	t.Cleanup(s.stop)
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := http.Get("http://" + s.admin + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return s
			}
		}
		select {
		case <-s.done:
			t.Fatalf("tokenvend exited at start:\n%s", s.logText())
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("tokenvend did not get ready:\n%s", s.logText())
		}
	}
}

func (s *server) logText() string {
	b, _ := os.ReadFile(s.log)
	return string(b)
}

// stop ends the server and waits until it has exited.
func (s *server) stop() {
	select {
	case <-s.done:
		return
	default:
	}
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.done:
	case <-time.After(10 * time.Second):
		_ = s.cmd.Process.Kill()
		<-s.done
	}
}

// serverConfig is the head of a configuration: shutting down at once, for the tests
// that stop the server.
const serverConfig = "server:\n  shutdown_delay: 0s\n  shutdown_grace: 1s\n"

// hungListener accepts connections on loopback and never answers on them: a tokenvend
// that is up but unresponsive.
func hungListener(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		l.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	return l.Addr().String()
}

// serviceAccounts mints Kubernetes-style ServiceAccount tokens (ES256 JWTs) and writes
// the key set tokenvend verifies them with.
type serviceAccounts struct {
	key      *ecdsa.PrivateKey
	jwksFile string
}

const saIssuer = "https://kubernetes.default.svc.cluster.local"

func newServiceAccounts(t *testing.T) *serviceAccounts {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := key.PublicKey.ECDH()
	if err != nil {
		t.Fatal(err)
	}
	point := pub.Bytes() // 0x04 || X || Y
	b64 := base64.RawURLEncoding.EncodeToString
	jwks, _ := json.Marshal(map[string]any{"keys": []any{map[string]string{
		"kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": "sa-1",
		"x": b64(point[1:33]), "y": b64(point[33:]),
	}}})
	path := filepath.Join(t.TempDir(), "jwks.json")
	if err := os.WriteFile(path, jwks, 0o600); err != nil {
		t.Fatal(err)
	}
	return &serviceAccounts{key: key, jwksFile: path}
}

// token returns a ServiceAccount token for namespace/name, valid for an hour.
func (sa *serviceAccounts) token(t *testing.T, namespace, name string) string {
	now := time.Now().Unix()
	b64 := base64.RawURLEncoding.EncodeToString
	header, _ := json.Marshal(map[string]string{"alg": "ES256", "kid": "sa-1", "typ": "JWT"})
	claims, _ := json.Marshal(map[string]any{
		"iss": saIssuer, "aud": []string{"tokenvend"},
		"sub": fmt.Sprintf("system:serviceaccount:%s:%s", namespace, name),
		"iat": now, "nbf": now, "exp": now + 3600,
	})
	input := b64(header) + "." + b64(claims)
	digest := sha256.Sum256([]byte(input))
	r, s, err := ecdsa.Sign(rand.Reader, sa.key, digest[:])
	if err != nil {
		t.Fatal(err)
	}
	sig := make([]byte, 64)
	r.FillBytes(sig[:32])
	s.FillBytes(sig[32:])
	return input + "." + b64(sig)
}
