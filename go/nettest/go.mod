module github.com/machnet-rs/machnet-rs/go/nettest

go 1.26.0

require github.com/machnet-rs/machnet-rs/go v0.0.0

require golang.org/x/net v0.63.0

replace github.com/machnet-rs/machnet-rs/go => ../
