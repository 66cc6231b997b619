// Command modzip writes a module zip exactly as the Go module proxy serves one, with the
// .info and .mod files beside it, in the proxy's directory layout (GOPROXY=file://DIR).
//
//	go run . -dir STAGED_MODULE -module PATH -version v0.1.0 -out PROXY_DIR
//
// It lives in a module of its own so that golang.org/x/mod is not a dependency of the
// client, and so that it is left out of the client's own zip (a directory holding a
// go.mod is another module).
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/mod/module"
	"golang.org/x/mod/sumdb/dirhash"
	modzip "golang.org/x/mod/zip"
)

func main() {
	dir := flag.String("dir", "", "the module's files, LICENSE included")
	path := flag.String("module", "", "the module path")
	version := flag.String("version", "", "the version, e.g. v0.1.0")
	out := flag.String("out", "", "the proxy directory to write into")
	flag.Parse()
	if err := run(*dir, *path, *version, *out); err != nil {
		fmt.Fprintln(os.Stderr, "modzip:", err)
		os.Exit(1)
	}
}

func run(dir, path, version, out string) error {
	mv := module.Version{Path: path, Version: version}
	if err := module.Check(path, version); err != nil {
		return err
	}
	escaped, err := module.EscapePath(path)
	if err != nil {
		return err
	}
	at := filepath.Join(out, filepath.FromSlash(escaped), "@v")
	if err := os.MkdirAll(at, 0o755); err != nil {
		return err
	}
	zipPath := filepath.Join(at, version+".zip")
	f, err := os.Create(zipPath)
	if err != nil {
		return err
	}
	// CreateFromDir applies the go command's rules: size limits, no vendor/ or nested
	// modules, no case-folding collisions, valid file names.
	if err := modzip.CreateFromDir(f, mv, dir); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	checked, err := modzip.CheckZip(mv, zipPath)
	if err != nil {
		return err
	}
	if err := checked.Err(); err != nil {
		return err
	}
	gomod, err := os.ReadFile(filepath.Join(dir, "go.mod"))
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(at, version+".mod"), gomod, 0o644); err != nil {
		return err
	}
	info, _ := json.Marshal(struct {
		Version string
		Time    time.Time
	}{version, time.Now().UTC().Truncate(time.Second)})
	if err := os.WriteFile(filepath.Join(at, version+".info"), info, 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(at, "list"), []byte(version+"\n"), 0o644); err != nil {
		return err
	}
	// The go.sum line a user's module will record, for the release notes.
	sum, err := dirhash.HashZip(zipPath, dirhash.Hash1)
	if err != nil {
		return err
	}
	fmt.Printf("%s %s %s\n", path, version, sum)
	fmt.Println(zipPath)
	return nil
}
