package machnet

// The directory of the prebuilt libmachnet.a for linux/amd64 (see lib/linux_amd64/lib.go): the
// import makes `go mod vendor` copy it; the cgo flags in machnet.go link it.
import _ "github.com/machnet-rs/machnet-rs/go/lib/linux_amd64"
