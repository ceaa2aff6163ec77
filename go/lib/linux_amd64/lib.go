// Package linux_amd64 holds the prebuilt static library of the released module for linux/amd64,
// libmachnet.a (placed here by ci/release/go.sh; absent in the repository, where the package
// links the Cargo output instead: see the cgo flags in ../../machnet.go).
//
// This file only makes the directory a package: `go mod vendor` copies the directories of
// imported packages only, so package machnet imports this one (lib_linux_amd64.go) and a
// vendored copy of the module keeps libmachnet.a.
package linux_amd64
