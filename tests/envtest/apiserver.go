package main

import (
	"context"
	"fmt"
	"net"
	"path/filepath"

	"github.com/spf13/pflag"

	utilerrors "k8s.io/apimachinery/pkg/util/errors"
	"k8s.io/client-go/rest"
	basecompatibility "k8s.io/component-base/compatibility"
	"k8s.io/component-base/featuregate"
	logsapi "k8s.io/component-base/logs/api/v1"
	"k8s.io/kubernetes/cmd/kube-apiserver/app"
	"k8s.io/kubernetes/cmd/kube-apiserver/app/options"
)

const serviceAccountIssuer = "https://kubernetes.default.svc.cluster.local"

// apiserverArgs are the kube-apiserver flags this harness always sets; extra
// --apiserver-arg values are appended after them and so win.
func apiserverArgs(p *pki, etcdURL, certDir string, verbosity int) []string {
	return []string{
		"--etcd-servers=" + etcdURL,
		"--bind-address=127.0.0.1",
		"--advertise-address=127.0.0.1",
		"--cert-dir=" + certDir,
		"--tls-cert-file=" + p.ServingCertFile,
		"--tls-private-key-file=" + p.ServingKeyFile,
		"--client-ca-file=" + p.CACertFile,
		"--token-auth-file=" + p.TokenFile,
		"--authorization-mode=Node,RBAC",
		"--anonymous-auth=true", // kube-apiserver default; anonymous gets only what RBAC grants system:unauthenticated
		"--service-account-issuer=" + serviceAccountIssuer,
		"--service-account-key-file=" + p.SAKeyFile,
		"--service-account-signing-key-file=" + p.SAKeyFile,
		"--service-cluster-ip-range=10.0.0.0/24",
		// No kubelets or nodes exist, and 127.0.0.1 is not a valid endpoint
		// address, so do not try to maintain endpoints for the "kubernetes" Service.
		"--endpoint-reconciler-type=none",
		"--allow-privileged=true",
		fmt.Sprintf("--v=%d", verbosity),
	}
}

// startAPIServer builds a real kube-apiserver (kube-aggregator -> kube-apiserver
// -> apiextensions-apiserver chain, exactly as cmd/kube-apiserver does) and runs
// it in a goroutine until ctx is cancelled. The returned channel receives the
// result of Run once the server has stopped, and is then closed.
func startAPIServer(ctx context.Context, listener net.Listener, args []string) (<-chan error, error) {
	s := options.NewServerRunOptions()
	fs := pflag.NewFlagSet("kube-apiserver", pflag.ContinueOnError)
	for _, f := range s.Flags().FlagSets {
		fs.AddFlagSet(f)
	}
	if err := fs.Parse(args); err != nil {
		return nil, fmt.Errorf("kube-apiserver flags: %w", err)
	}

	// What the real command does in PersistentPreRunE / RunE.
	if err := s.GenericServerRunOptions.ComponentGlobalsRegistry.Set(); err != nil {
		return nil, err
	}
	rest.SetDefaultWarningHandler(rest.NoWarnings{})
	featureGate := s.GenericServerRunOptions.ComponentGlobalsRegistry.FeatureGateFor(basecompatibility.DefaultKubeComponent)
	if err := logsapi.ValidateAndApply(s.Logs, featureGate); err != nil {
		return nil, err
	}

	// Serve on a listener we already hold: no port race.
	s.SecureServing.Listener = listener
	s.SecureServing.BindPort = listener.Addr().(*net.TCPAddr).Port
	s.SecureServing.BindAddress = listener.Addr().(*net.TCPAddr).IP
	s.SecureServing.ExternalAddress = s.SecureServing.BindAddress

	completed, err := s.Complete(ctx)
	if err != nil {
		return nil, fmt.Errorf("complete kube-apiserver options: %w", err)
	}
	if errs := completed.Validate(); len(errs) != 0 {
		return nil, fmt.Errorf("validate kube-apiserver options: %w", utilerrors.NewAggregate(errs))
	}
	if mfg, ok := featureGate.(featuregate.MutableFeatureGate); ok {
		mfg.AddMetrics()
	}
	s.GenericServerRunOptions.ComponentGlobalsRegistry.AddMetrics()

	config, err := app.NewConfig(completed)
	if err != nil {
		return nil, fmt.Errorf("kube-apiserver config: %w", err)
	}
	completedConfig, err := config.Complete()
	if err != nil {
		return nil, fmt.Errorf("complete kube-apiserver config: %w", err)
	}
	server, err := app.CreateServerChain(completedConfig)
	if err != nil {
		return nil, fmt.Errorf("create kube-apiserver server chain: %w", err)
	}
	prepared, err := server.PrepareRun()
	if err != nil {
		return nil, fmt.Errorf("prepare kube-apiserver: %w", err)
	}

	done := make(chan error, 1)
	go func() {
		defer close(done)
		done <- prepared.Run(ctx)
	}()
	return done, nil
}

func certDirFor(dataDir string) string { return filepath.Join(dataDir, "apiserver-certs") }
