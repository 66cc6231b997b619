// Package extauthz_test calls tokenvend's ext_authz service the way Envoy does, with the
// client and messages generated from Envoy's own protos (go-control-plane), against the
// real tokenvend binary with a configuration of its own and a token endpoint on loopback.
package extauthz_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
)

// The configuration tokenvend runs with: two profiles, each with a companion header, and a
// route map. `{TOKEN_URL}` is replaced with the test's token endpoint.
const config = `server:
  shutdown_delay: 0s
  ext_authz:
    routes:
      - { host: api.example.com, path_prefix: /v2/, profile: reports }
profiles:
  orders:
    token_url: {TOKEN_URL}
    client_id: orders-client
    client_secret: { env: EXTAUTHZ_TEST_SECRET }
    headers: { x-api-key: { env: EXTAUTHZ_TEST_ORDERS_KEY } }
  reports:
    token_url: {TOKEN_URL}
    client_id: reports-client
    client_secret: { env: EXTAUTHZ_TEST_SECRET }
`

var (
	client authv3.AuthorizationClient
	issued atomic.Int64
)

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	bin := os.Getenv("TOKENVEND_BIN")
	if bin == "" {
		bin = filepath.Join("..", "..", "target", "debug", "tokenvend")
	}
	if _, err := os.Stat(bin); err != nil {
		fmt.Fprintf(os.Stderr, "tokenvend binary not found (%v); set TOKENVEND_BIN\n", err)
		return 1
	}
	// The token endpoint: `tok-N` for client_id `C` is `C-tok-N`, an hour long.
	idp := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := r.ParseForm(); err != nil || r.PostForm.Get("client_secret") != "s3cret" {
			http.Error(w, `{"error":"invalid_client"}`, http.StatusUnauthorized)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]any{
			"access_token": fmt.Sprintf("%s-tok-%d", r.PostForm.Get("client_id"), issued.Add(1)),
			"token_type":   "bearer",
			"expires_in":   3600,
		})
	}))
	defer idp.Close()

	dir, err := os.MkdirTemp("", "extauthz-go-*")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "config.yaml")
	text := strings.ReplaceAll(config, "{TOKEN_URL}", idp.URL+"/token")
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	grpcAddr, adminAddr := freeAddr(), freeAddr()
	cmd := exec.Command(bin, "serve", "--config", path, "--listen", grpcAddr, "--admin-listen", adminAddr)
	cmd.Env = append(os.Environ(), "EXTAUTHZ_TEST_SECRET=s3cret", "EXTAUTHZ_TEST_ORDERS_KEY=orders-key")
	logPath := filepath.Join(dir, "server.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		fmt.Fprintf(os.Stderr, "starting %s: %v\n", bin, err)
		return 1
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	defer func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
	}()
	if err := waitReady(adminAddr, exited, 30*time.Second); err != nil {
		log, _ := os.ReadFile(logPath)
		fmt.Fprintf(os.Stderr, "tokenvend did not get ready: %v\nserver log:\n%s\n", err, log)
		return 1
	}
	conn, err := grpc.NewClient(grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer conn.Close()
	client = authv3.NewAuthorizationClient(conn)
	return m.Run()
}

// freeAddr picks a free loopback port; it is released before the server binds it, a small
// window for a clash that is acceptable in a test.
func freeAddr() string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// waitReady polls /readyz until it answers 200, the server exits, or time runs out.
func waitReady(adminAddr string, exited <-chan struct{}, within time.Duration) error {
	deadline := time.Now().Add(within)
	var last error
	for time.Now().Before(deadline) {
		select {
		case <-exited:
			return fmt.Errorf("tokenvend exited")
		default:
		}
		resp, err := http.Get("http://" + adminAddr + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			err = fmt.Errorf("readyz: %s", resp.Status)
		}
		last = err
		time.Sleep(100 * time.Millisecond)
	}
	return last
}

// request is what Envoy sends for a request: the route's context_extensions, and the
// request's host, path and headers.
func request(extensions map[string]string, host, path string, headers map[string]string) *authv3.CheckRequest {
	return &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
		ContextExtensions: extensions,
		Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{
			Method: "GET", Host: host, Path: path, Headers: headers, Protocol: "HTTP/1.1",
		}},
	}}
}

func check(t *testing.T, req *authv3.CheckRequest) *authv3.CheckResponse {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := client.Check(ctx, req)
	if err != nil {
		t.Fatalf("Check: %v", err)
	}
	// The response obeys the constraints Envoy's API declares (header names and values
	// well formed, a status code in range).
	if err := resp.ValidateAll(); err != nil {
		t.Fatalf("the response breaks Envoy's API rules: %v", err)
	}
	return resp
}

// upstream applies an allowed response to the request's headers as Envoy's ext_authz
// filter does (for the header actions it sends), giving what the upstream receives.
func upstream(t *testing.T, sent map[string]string, resp *authv3.CheckResponse) map[string]string {
	t.Helper()
	if codes.Code(resp.GetStatus().GetCode()) != codes.OK {
		t.Fatalf("not allowed: %v", resp)
	}
	ok := resp.GetOkResponse()
	if ok == nil {
		t.Fatalf("no OkHttpResponse: %v", resp)
	}
	out := map[string]string{}
	for k, v := range sent {
		out[k] = v
	}
	for _, option := range ok.GetHeaders() {
		//nolint:staticcheck // `append` is deprecated, and must stay unset.
		if option.GetAppend() != nil {
			t.Errorf("header %q sets the deprecated `append`", option.GetHeader().GetKey())
		}
		if option.GetAppendAction() != corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD {
			t.Errorf("header %q: action %v, want OVERWRITE_IF_EXISTS_OR_ADD", option.GetHeader().GetKey(), option.GetAppendAction())
		}
		out[option.GetHeader().GetKey()] = option.GetHeader().GetValue()
	}
	for _, name := range ok.GetHeadersToRemove() {
		delete(out, name)
	}
	return out
}

func TestCheckSetsTheProfilesHeadersOverTheClients(t *testing.T) {
	sent := map[string]string{"authorization": "Bearer the-clients-own", "x-api-key": "forged"}
	resp := check(t, request(map[string]string{"tokenvend_profile": "orders"}, "orders.internal", "/orders", sent))
	got := upstream(t, sent, resp)
	if !strings.HasPrefix(got["authorization"], "Bearer orders-client-tok-") {
		t.Errorf("authorization upstream = %q, want tokenvend's orders token", got["authorization"])
	}
	if got["x-api-key"] != "orders-key" {
		t.Errorf("x-api-key upstream = %q, want the profile's companion header", got["x-api-key"])
	}

	// Asked again: the same token, from tokenvend's cache.
	again := upstream(t, nil, check(t, request(map[string]string{"tokenvend_profile": "orders"}, "h", "/", nil)))
	if again["authorization"] != got["authorization"] {
		t.Errorf("second Check got %q, want the cached %q", again["authorization"], got["authorization"])
	}
}

func TestTheHeaderAndTheRouteMapChooseTheProfile(t *testing.T) {
	sent := map[string]string{"x-tokenvend-profile": "reports"}
	got := upstream(t, sent, check(t, request(nil, "h", "/", sent)))
	if !strings.HasPrefix(got["authorization"], "Bearer reports-client-tok-") {
		t.Errorf("by header: authorization = %q, want the reports token", got["authorization"])
	}
	if _, ok := got["x-tokenvend-profile"]; ok {
		t.Error("the selection header went upstream")
	}
	got = upstream(t, nil, check(t, request(nil, "api.example.com:443", "/v2/summary?month=1", nil)))
	if !strings.HasPrefix(got["authorization"], "Bearer reports-client-tok-") {
		t.Errorf("by route: authorization = %q, want the reports token", got["authorization"])
	}
}

func TestUnknownOrUnchosenProfilesAreDeniedWith403(t *testing.T) {
	for name, req := range map[string]*authv3.CheckRequest{
		"unknown":   request(map[string]string{"tokenvend_profile": "payroll"}, "h", "/", nil),
		"unchosen":  request(nil, "api.example.com", "/v1/", nil),
		"no header": request(nil, "h", "/", map[string]string{"x-other": "reports"}),
	} {
		resp := check(t, req)
		denied := resp.GetDeniedResponse()
		if denied == nil {
			t.Errorf("%s: not denied: %v", name, resp)
			continue
		}
		if denied.GetStatus().GetCode() != typev3.StatusCode_Forbidden {
			t.Errorf("%s: HTTP status %v, want 403", name, denied.GetStatus().GetCode())
		}
		if codes.Code(resp.GetStatus().GetCode()) != codes.PermissionDenied || resp.GetStatus().GetMessage() != "" {
			t.Errorf("%s: status %v, want PERMISSION_DENIED and no message", name, resp.GetStatus())
		}
		if denied.GetBody() != "" {
			t.Errorf("%s: body %q tells the client something", name, denied.GetBody())
		}
	}
}
