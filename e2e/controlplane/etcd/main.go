// Command etcd is a thin wrapper around etcd's own main package, so the
// e2e control plane can build etcd from the Go module proxy.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
