package tokenvend

import (
	"context"
	"os"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// saRereadInterval forces a re-read even when the file looks unchanged, in case a rotation
// kept its size and modification time (coarse file system timestamps).
const saRereadInterval = time.Minute

// fileCredentials sends a bearer token read from a file, such as a Kubernetes projected
// ServiceAccount token, as gRPC per-RPC credentials.
type fileCredentials struct {
	path string
	now  func() time.Time

	mu      sync.Mutex
	token   string
	modTime time.Time
	size    int64
	readAt  time.Time
}

func newFileCredentials(path string) *fileCredentials {
	return &fileCredentials{path: path, now: time.Now}
}

// GetRequestMetadata implements credentials.PerRPCCredentials.
func (f *fileCredentials) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	tok, err := f.current()
	if err != nil {
		return nil, status.Errorf(codes.Unauthenticated, "tokenvend: reading the ServiceAccount token: %v", err)
	}
	return map[string]string{"authorization": "Bearer " + tok}, nil
}

// RequireTransportSecurity implements credentials.PerRPCCredentials. tokenvend is usually
// reached over loopback or the cluster network in plaintext, so the token may be sent
// without TLS.
func (f *fileCredentials) RequireTransportSecurity() bool { return false }

// current stats the file on every call (cheap) and reads it only when it changed or the
// last read is older than saRereadInterval.
func (f *fileCredentials) current() (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fi, err := os.Stat(f.path)
	if err != nil {
		return "", err
	}
	now := f.now()
	if f.token != "" && fi.ModTime().Equal(f.modTime) && fi.Size() == f.size &&
		now.Sub(f.readAt) < saRereadInterval {
		return f.token, nil
	}
	b, err := os.ReadFile(f.path)
	if err != nil {
		return "", err
	}
	tok := strings.TrimSpace(string(b))
	if tok == "" {
		return "", errEmptyFile
	}
	f.token, f.modTime, f.size, f.readAt = tok, fi.ModTime(), fi.Size(), now
	return tok, nil
}

type constError string

func (e constError) Error() string { return string(e) }

const errEmptyFile = constError("the file is empty")
