// Command kube is one multi-call binary for the Kubernetes components (and, in
// the ground's own build, etcd: see etcd.go) that the test ground runs: it
// dispatches on the name it was started as (argv[0]), like busybox. One link
// instead of eight, and one file on disk.
package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	_ "time/tzdata" // CronJob time zones, as in the upstream kube-controller-manager.

	"github.com/spf13/cobra"
	"k8s.io/component-base/cli"
	"k8s.io/component-base/logs"
	_ "k8s.io/component-base/logs/json/register"
	_ "k8s.io/component-base/metrics/prometheus/clientgo"
	_ "k8s.io/component-base/metrics/prometheus/version"
	kubectl "k8s.io/kubectl/pkg/cmd"
	kubectlutil "k8s.io/kubectl/pkg/cmd/util"
	apiserver "k8s.io/kubernetes/cmd/kube-apiserver/app"
	controllermanager "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	proxy "k8s.io/kubernetes/cmd/kube-proxy/app"
	scheduler "k8s.io/kubernetes/cmd/kube-scheduler/app"
	kubeadm "k8s.io/kubernetes/cmd/kubeadm/app"
	kubeadmerrors "k8s.io/kubernetes/cmd/kubeadm/app/util/errors"
	kubelet "k8s.io/kubernetes/cmd/kubelet/app"

	_ "k8s.io/client-go/plugin/pkg/client/auth"
)

var components = map[string]func() *cobra.Command{
	"kube-apiserver":          apiserver.NewAPIServerCommand,
	"kube-controller-manager": controllermanager.NewControllerManagerCommand,
	"kube-scheduler": func() *cobra.Command {
		return scheduler.NewSchedulerCommand()
	},
	"kube-proxy": proxy.NewProxyCommand,
	"kubelet": func() *cobra.Command {
		return kubelet.NewKubeletCommand(context.Background())
	},
}

// Commands that are not cobra components: etcd.go adds etcd's where it is built in.
var mains = map[string]func(){}

func main() {
	name := filepath.Base(os.Args[0])
	if run, ok := mains[name]; ok {
		run()
		return
	}
	switch name {
	case "kubeadm":
		kubeadmerrors.HandleError(kubeadm.Run())
		return
	case "kubectl":
		logs.GlogSetter(kubectl.GetLogVerbosity(os.Args)) // nolint:errcheck
		if err := cli.RunNoErrOutput(kubectl.NewDefaultKubectlCommand()); err != nil {
			kubectlutil.CheckErr(err)
		}
		return
	}
	if newCommand, ok := components[name]; ok {
		os.Exit(cli.Run(newCommand()))
	}
	fmt.Fprintf(os.Stderr, "kube: unknown component %q; start it through a link named etcd, etcdctl (where built in), kubeadm, kubectl, kube-apiserver, kube-controller-manager, kube-scheduler, kube-proxy or kubelet\n", name)
	os.Exit(2)
}
