// etcd and etcdctl in the multi-call binary of the ground's own Kubernetes. The tenant
// versions' builds leave this file out: their images run no etcd, and etcd's modules
// are pinned for the ground's Kubernetes only.
package main

import (
	"os"

	"go.etcd.io/etcd/etcdctl/v3/ctlv3"
	"go.etcd.io/etcd/server/v3/etcdmain"
)

func init() {
	mains["etcd"] = func() { etcdmain.Main(os.Args) }
	mains["etcdctl"] = ctlv3.MustStart
}
