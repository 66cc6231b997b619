package tokenvend_test

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	tokenvend "github.com/tokenvend/tokenvend/client/go"
)

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return c
}

var jwtShape = regexp.MustCompile(`^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$`)

func TestGetTokenDemo(t *testing.T) {
	c, _ := newClient(t)
	tok, err := c.GetToken(ctx(t), "demo")
	if err != nil {
		t.Fatal(err)
	}
	if !jwtShape.MatchString(tok.AccessToken) {
		t.Errorf("access token does not look like a JWT (%d chars)", len(tok.AccessToken))
	}
	if tok.TokenType != "Bearer" {
		t.Errorf("TokenType = %q, want Bearer", tok.TokenType)
	}
	// The server may hand out a token it fetched for an earlier test, so allow some age.
	if ttl := time.Until(tok.ExpiresAt); ttl < 200*time.Second || ttl > 301*time.Second {
		t.Errorf("token expires in %v, want about 300s", ttl)
	}
	if got, want := tok.Headers["authorization"], "Bearer "+tok.AccessToken; got != want {
		t.Errorf(`Headers["authorization"] is not "Bearer " + AccessToken`)
	}
	if tok.Profile != "demo" {
		t.Errorf("Profile = %q, want demo", tok.Profile)
	}
}

func TestMinTTLIsSentAndBeyondTheLifetimeIsOutOfRange(t *testing.T) {
	c, rpcs := newClient(t)
	if _, err := c.GetToken(ctx(t), "demo"); err != nil {
		t.Fatal(err)
	}
	// Demo tokens live 300 s: the local copy cannot satisfy a 10 min MinTTL, and tokenvend
	// refuses a min_ttl beyond the token lifetime.
	_, err := c.GetToken(ctx(t), "demo", tokenvend.MinTTL(10*time.Minute))
	if code := status.Code(err); code != codes.OutOfRange {
		t.Errorf("MinTTL(10m): code %v (%v), want OutOfRange", code, err)
	}
	if tokenvend.Retryable(err) {
		t.Error("OutOfRange is not retryable")
	}
	reqs := rpcs.requests()
	if len(reqs) != 2 || reqs[0].minTTL || !reqs[1].minTTL {
		t.Errorf("RPCs %+v: want one without min_ttl, then the caller's", reqs)
	}
}

func TestCallerContextCancelled(t *testing.T) {
	c, _ := newClient(t)
	cctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := c.GetToken(cctx, "demo"); err == nil {
		t.Error("no error with a cancelled context")
	}
	// The cancelled caller must not poison the client for others.
	if _, err := c.GetToken(ctx(t), "demo"); err != nil {
		t.Error(err)
	}
}

func TestTokenIsRedacted(t *testing.T) {
	c, _ := newClient(t)
	tok, err := c.GetToken(ctx(t), "demo")
	if err != nil {
		t.Fatal(err)
	}
	var logged bytes.Buffer
	slog.New(slog.NewTextHandler(&logged, nil)).Info("got", "token", tok, "value", *tok)
	slog.New(slog.NewJSONHandler(&logged, nil)).Info("got", "token", tok)
	out := fmt.Sprintf("%v %+v %#v %s %v %+v %#v", tok, tok, tok, tok, *tok, *tok, *tok) + logged.String()
	// The signature alone is enough to tell: it is the secret part.
	sig := tok.AccessToken[strings.LastIndex(tok.AccessToken, ".")+1:]
	if strings.Contains(out, sig) {
		t.Errorf("formatted token leaks the secret: %s", out)
	}
	if !strings.Contains(out, "demo") || !strings.Contains(out, "redacted") {
		t.Errorf("formatted token lost its useful parts: %s", out)
	}
}

func TestServiceAccountTokenFile(t *testing.T) {
	path := t.TempDir() + "/token"
	if err := os.WriteFile(path, []byte("sa-token"), 0o600); err != nil {
		t.Fatal(err)
	}
	c, _ := newClient(t, tokenvend.WithServiceAccountTokenFile(path))
	if _, err := c.GetToken(ctx(t), "demo"); err != nil {
		t.Fatalf("GetToken with a ServiceAccount token: %v", err)
	}
	// Without the file the call fails before reaching the server.
	c, _ = newClient(t, tokenvend.WithServiceAccountTokenFile(path+".missing"))
	_, err := c.GetToken(ctx(t), "demo")
	if code := status.Code(err); code != codes.Unauthenticated {
		t.Errorf("missing token file: code %v (%v), want Unauthenticated", code, err)
	}
}
