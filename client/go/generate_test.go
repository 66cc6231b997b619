package tokenvend_test

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"testing"
)

// TestGeneratedCodeIsUpToDate regenerates tokenvendpb into a temporary directory and
// compares it with the committed code. Building buf takes minutes, so the test runs only
// when generate.sh has already installed the pinned tools into .bin (or when
// TOKENVEND_CHECK_GENERATED=1 asks for it anyway).
func TestGeneratedCodeIsUpToDate(t *testing.T) {
	if os.Getenv("TOKENVEND_CHECK_GENERATED") != "1" && !toolsInstalled(t) {
		t.Skip("pinned code generators not in .bin; run ./generate.sh once or set TOKENVEND_CHECK_GENERATED=1")
	}
	out := t.TempDir()
	cmd := exec.Command("./generate.sh")
	cmd.Env = append(os.Environ(), "OUT_DIR="+out)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("generate.sh: %v\n%s", err, b)
	}
	for _, name := range []string{"tokenvend.pb.go", "tokenvend_grpc.pb.go"} {
		want, err := os.ReadFile(filepath.Join(out, "tokenvendpb", name))
		if err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(filepath.Join("tokenvendpb", name))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("tokenvendpb/%s is stale; run ./generate.sh", name)
		}
	}
}

// toolsInstalled reports whether every tool pinned in generate.sh is in .bin at its pinned
// version, so that generate.sh will not go to the network.
func toolsInstalled(t *testing.T) bool {
	script, err := os.ReadFile("generate.sh")
	if err != nil {
		t.Fatal(err)
	}
	pins := map[string]string{
		"buf":                `BUF_VERSION=(\S+)`,
		"protoc-gen-go":      `PROTOC_GEN_GO_VERSION=(\S+)`,
		"protoc-gen-go-grpc": `PROTOC_GEN_GO_GRPC_VERSION=(\S+)`,
	}
	for tool, re := range pins {
		m := regexp.MustCompile(`(?m)^` + re).FindSubmatch(script)
		if m == nil {
			t.Fatalf("generate.sh pins no version for %s", tool)
		}
		stamp, err := os.ReadFile(filepath.Join(".bin", "."+tool+".version"))
		if err != nil || string(bytes.TrimSpace(stamp)) != string(m[1]) {
			return false
		}
		if _, err := os.Stat(filepath.Join(".bin", tool)); err != nil {
			return false
		}
	}
	return true
}
