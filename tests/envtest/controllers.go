package main

import (
	"context"
	"fmt"

	"github.com/spf13/pflag"

	kcm "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	kcmoptions "k8s.io/kubernetes/cmd/kube-controller-manager/app/options"
)

// defaultControllers is the small set of kube-controller-manager controllers
// that integration tests of an operator usually depend on:
//   - garbage-collector: deletes dependents whose ownerReferences point at a
//     deleted owner (cascading deletion, foreground/background/orphan).
//   - namespace: finalizes deleted namespaces (without it they stay
//     Terminating forever).
//   - serviceaccount: creates the "default" ServiceAccount in new namespaces.
//   - serviceaccount-token: fills legacy kubernetes.io/service-account-token
//     Secrets (TokenRequest does NOT need it; it is served by the apiserver).
//   - clusterrole-aggregation: fills the aggregated ClusterRoles admin, edit
//     and view (they have no rules without it) and any aggregated role a
//     test creates.
const defaultControllers = "garbage-collector-controller,namespace-controller,serviceaccount-controller,serviceaccount-token-controller,clusterrole-aggregation-controller"

func controllerManagerArgs(kubeconfig string, p *pki, controllers string, verbosity int) []string {
	return []string{
		"--kubeconfig=" + kubeconfig,
		"--controllers=" + controllers,
		"--leader-elect=false",
		// No HTTPS endpoint for the controller manager: nothing needs its
		// /healthz or /metrics, and it would need another port.
		"--secure-port=0",
		"--use-service-account-credentials=false",
		"--service-account-private-key-file=" + p.SAKeyFile,
		"--root-ca-file=" + p.CACertFile,
		// Be quick about noticing new resource types (CRDs) for GC.
		"--concurrent-gc-syncs=5",
		fmt.Sprintf("--v=%d", verbosity),
	}
}

// controllerManager is kube-controller-manager, configured in two steps: its
// flags must be registered before the kube-apiserver's, because registering
// them flips a feature-gate default (WatchListClient), which is no longer
// allowed once the apiserver has added the feature gates to its flag set.
type controllerManager struct {
	opts     *kcmoptions.KubeControllerManagerOptions
	fs       *pflag.FlagSet
	all      []string
	disabled []string
	aliases  map[string]string
}

func newControllerManager() (*controllerManager, error) {
	s, err := kcmoptions.NewKubeControllerManagerOptions()
	if err != nil {
		return nil, err
	}
	cm := &controllerManager{
		opts:     s,
		fs:       pflag.NewFlagSet("kube-controller-manager", pflag.ContinueOnError),
		all:      kcm.KnownControllers(),
		disabled: kcm.ControllersDisabledByDefault(),
		aliases:  kcm.ControllerAliases(),
	}
	named := s.Flags(cm.all, cm.disabled, cm.aliases)
	for _, f := range named.FlagSets {
		cm.fs.AddFlagSet(f)
	}
	return cm, nil
}

// start runs kube-controller-manager in-process, restricted to the
// controllers named in args, until ctx is cancelled.
func (cm *controllerManager) start(ctx context.Context, args []string) (<-chan error, error) {
	if err := cm.fs.Parse(args); err != nil {
		return nil, fmt.Errorf("kube-controller-manager flags: %w", err)
	}
	// The apiserver already applied the shared component globals (feature
	// gates, emulation version) and the logging configuration of this process.
	c, err := cm.opts.Config(ctx, cm.all, cm.disabled, cm.aliases)
	if err != nil {
		return nil, fmt.Errorf("kube-controller-manager config: %w", err)
	}
	done := make(chan error, 1)
	go func() {
		defer close(done)
		done <- kcm.Run(ctx, c.Complete())
	}()
	return done, nil
}
