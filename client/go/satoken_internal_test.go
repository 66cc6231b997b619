package tokenvend

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestFileCredentialsFollowRotation(t *testing.T) {
	path := filepath.Join(t.TempDir(), "token")
	write := func(s string, mtime time.Time) {
		t.Helper()
		if err := os.WriteFile(path, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(path, mtime, mtime); err != nil {
			t.Fatal(err)
		}
	}
	now := time.Now()
	f := newFileCredentials(path)
	f.now = func() time.Time { return now }
	auth := func() string {
		t.Helper()
		md, err := f.GetRequestMetadata(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		return md["authorization"]
	}

	t0 := now.Add(-time.Hour)
	write("first\n", t0)
	if got := auth(); got != "Bearer first" {
		t.Fatalf("got %q", got)
	}
	// A rotation shows in the modification time.
	write("second", t0.Add(time.Second))
	if got := auth(); got != "Bearer second" {
		t.Fatalf("after rotation got %q", got)
	}
	// One that does not (same size and time) is picked up within a minute.
	write("thirds", t0.Add(time.Second))
	if got := auth(); got != "Bearer second" {
		t.Fatalf("re-read too early: %q", got)
	}
	now = now.Add(saRereadInterval)
	if got := auth(); got != "Bearer thirds" {
		t.Fatalf("not re-read after a minute: %q", got)
	}

	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if _, err := f.GetRequestMetadata(context.Background()); status.Code(err) != codes.Unauthenticated {
		t.Errorf("missing file: %v, want Unauthenticated", err)
	}
}
