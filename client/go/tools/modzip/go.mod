module github.com/tokenvend/tokenvend/client/go/tools/modzip

go 1.25.0

require golang.org/x/mod v0.40.0
