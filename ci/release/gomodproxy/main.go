// Command gomodproxy writes one version of a Go module in the GOPROXY file layout, as a module
// proxy serves it ($GOPROXY/<module>/@v/list, <version>.info, <version>.mod, <version>.zip):
// the zip by golang.org/x/mod/zip (the go command's own module-zip rules and checks), so
// GOPROXY=file://<out> serves it to `go get`. Used by ci/release/go.sh.
//
//	gomodproxy -module PATH -version vX.Y.Z -dir MODULE_DIR -out PROXY_DIR [-time RFC3339]
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/mod/modfile"
	"golang.org/x/mod/module"
	"golang.org/x/mod/semver"
	"golang.org/x/mod/zip"
)

func main() {
	modPath := flag.String("module", "", "module path")
	version := flag.String("version", "", "version (vX.Y.Z)")
	dir := flag.String("dir", "", "module root (holds go.mod)")
	out := flag.String("out", "", "proxy root to write into")
	stamp := flag.String("time", "", "version time, RFC 3339 (default: now)")
	flag.Parse()
	if err := run(*modPath, *version, *dir, *out, *stamp); err != nil {
		fmt.Fprintln(os.Stderr, "gomodproxy:", err)
		os.Exit(1)
	}
}

func run(modPath, version, dir, out, stamp string) error {
	mv := module.Version{Path: modPath, Version: version}
	if err := module.Check(modPath, version); err != nil {
		return err
	}
	if semver.Canonical(version) != version {
		return fmt.Errorf("version %q is not canonical", version)
	}
	t := time.Now().UTC()
	if stamp != "" {
		var err error
		if t, err = time.Parse(time.RFC3339, stamp); err != nil {
			return err
		}
	}
	gomod, err := os.ReadFile(filepath.Join(dir, "go.mod"))
	if err != nil {
		return err
	}
	if got := modfile.ModulePath(gomod); got != modPath {
		return fmt.Errorf("%s/go.mod declares module %q, not %q", dir, got, modPath)
	}
	escaped, err := module.EscapePath(modPath)
	if err != nil {
		return err
	}
	vdir := filepath.Join(out, filepath.FromSlash(escaped), "@v")
	if err := os.MkdirAll(vdir, 0o755); err != nil {
		return err
	}
	base := filepath.Join(vdir, version)
	if err := writeZip(base+".zip", mv, dir); err != nil {
		return err
	}
	if err := os.WriteFile(base+".mod", gomod, 0o644); err != nil {
		return err
	}
	info, err := json.Marshal(struct {
		Version string
		Time    time.Time
	}{version, t.UTC()})
	if err != nil {
		return err
	}
	if err := os.WriteFile(base+".info", info, 0o644); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(vdir, "list"), []byte(version+"\n"), 0o644)
}

func writeZip(path string, mv module.Version, dir string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := zip.CreateFromDir(f, mv, dir); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
