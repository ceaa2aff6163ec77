module example.invalid/machnet-rs/go

go 1.19
