package tokenvend_test

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	tokenvend "github.com/tokenvend/tokenvend/client/go"
)

// target is the gRPC address of the tokenvend server that TestMain starts.
var target string

// TestMain runs the real tokenvend binary in --dev mode (a built-in issuer and a "demo"
// profile) for the whole test run.
func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	bin := tokenvendBin()
	if _, err := os.Stat(bin); err != nil {
		fmt.Fprintf(os.Stderr, "tokenvend binary not found (%v); set TOKENVEND_BIN or run "+
			"`cargo build -p tokenvend-server --bin tokenvend` in the repository root\n", err)
		return 1
	}
	grpcAddr, adminAddr := freeAddr(), freeAddr()
	cmd := exec.Command(bin, "serve", "--dev", "--listen", grpcAddr, "--admin-listen", adminAddr)
	logFile, err := os.CreateTemp("", "tokenvend-server-*.log")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.Remove(logFile.Name())
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		fmt.Fprintf(os.Stderr, "starting %s: %v\n", bin, err)
		return 1
	}
	defer func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	}()

	target = grpcAddr
	if err := waitReady(adminAddr, 30*time.Second); err != nil {
		log, _ := os.ReadFile(logFile.Name())
		fmt.Fprintf(os.Stderr, "tokenvend did not get ready: %v\nserver log:\n%s\n", err, log)
		return 1
	}
	return m.Run()
}

// tokenvendBin is the server binary the tests run.
func tokenvendBin() string {
	if bin := os.Getenv("TOKENVEND_BIN"); bin != "" {
		return bin
	}
	// go test runs in the package directory, client/go of the repository.
	return filepath.Join("..", "..", "target", "debug", "tokenvend")
}

// freeAddr picks a free loopback port. The port is released before the server binds it,
// which leaves a small window for a clash that is acceptable in tests.
func freeAddr() string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// waitReady polls /readyz and then a real GetToken("demo"), so that the first test does
// not race the issuer's start-up.
func waitReady(adminAddr string, within time.Duration) error {
	deadline := time.Now().Add(within)
	var last error
	for time.Now().Before(deadline) {
		last = probe(adminAddr)
		if last == nil {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return last
}

func probe(adminAddr string) error {
	resp, err := http.Get("http://" + adminAddr + "/readyz")
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("readyz: %s", resp.Status)
	}
	c, err := tokenvend.NewClient(target)
	if err != nil {
		return err
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_, err = c.GetToken(ctx, "demo")
	return err
}
