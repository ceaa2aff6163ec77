module example.invalid/machnet-rs/go/nettest

go 1.26.0

require example.invalid/machnet-rs/go v0.0.0

require golang.org/x/net v0.63.0

replace example.invalid/machnet-rs/go => ../
