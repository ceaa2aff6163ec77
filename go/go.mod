module github.com/machnet-rs/machnet-rs/go

go 1.19
