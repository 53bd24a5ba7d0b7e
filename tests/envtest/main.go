// Command envtest runs a real, single-process Kubernetes control plane for
// integration tests: an embedded etcd, a real kube-apiserver (with
// apiextensions and the aggregator) and, by default, a few
// kube-controller-manager controllers (garbage collector, namespace,
// serviceaccount). Everything listens on 127.0.0.1 only.
//
// It writes an admin kubeconfig, prints "READY <kubeconfig path>" on stdout
// once the API server is ready, and runs until SIGTERM/SIGINT or until its
// stdin reaches EOF (so a test harness that dies does not leak it).
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	logsapi "k8s.io/component-base/logs/api/v1"
	"k8s.io/klog/v2"
)

type stringList []string

func (s *stringList) String() string     { return strings.Join(*s, " ") }
func (s *stringList) Set(v string) error { *s = append(*s, v); return nil }

type cliOptions struct {
	kubeconfigOut  string
	dataDir        string
	keepData       bool
	port           int
	controllers    string
	exitOnStdinEOF bool
	readyTimeout   time.Duration
	logFile        string
	verbosity      int
	apiserverArgs  stringList
	kcmArgs        stringList
}

func main() {
	var o cliOptions
	// A private flag set: imported Kubernetes packages register dozens of
	// flags on flag.CommandLine that have nothing to do with envtest.
	fs := flag.NewFlagSet("envtest", flag.ExitOnError)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: envtest --kubeconfig-out PATH [flags]\n\nRuns etcd + kube-apiserver (+ selected kube-controller-manager controllers) on 127.0.0.1,\nprints \"READY <kubeconfig>\" on stdout, runs until SIGTERM/SIGINT or stdin EOF.\n\n")
		fs.PrintDefaults()
	}
	fs.StringVar(&o.kubeconfigOut, "kubeconfig-out", "", "where to write the admin kubeconfig (required)")
	fs.StringVar(&o.dataDir, "data-dir", "", "parent directory for this run's data (etcd, certificates); a fresh envtest-* directory is created inside it and removed on exit (default: $TMPDIR)")
	fs.BoolVar(&o.keepData, "keep-data", false, "do not remove the run's data directory on exit")
	fs.IntVar(&o.port, "port", 0, "secure port of the API server on 127.0.0.1 (0: pick a free port)")
	fs.StringVar(&o.controllers, "controllers", defaultControllers, "comma-separated kube-controller-manager controllers to run in-process; \"none\" runs no controller manager")
	fs.BoolVar(&o.exitOnStdinEOF, "exit-on-stdin-eof", true, "shut down when stdin reaches EOF (set to false when stdin is /dev/null, e.g. a background shell job)")
	fs.DurationVar(&o.readyTimeout, "ready-timeout", 3*time.Minute, "give up if the control plane is not ready within this time")
	fs.StringVar(&o.logFile, "log-file", "", "append all logs (normally on stderr) to this file instead")
	fs.IntVar(&o.verbosity, "v", 0, "klog verbosity of the control-plane components")
	fs.Var(&o.apiserverArgs, "apiserver-arg", "extra kube-apiserver flag, e.g. --apiserver-arg=--feature-gates=Foo=true (repeatable)")
	fs.Var(&o.kcmArgs, "controller-manager-arg", "extra kube-controller-manager flag (repeatable)")
	_ = fs.Parse(os.Args[1:])

	if o.kubeconfigOut == "" {
		fmt.Fprintln(os.Stderr, "envtest: --kubeconfig-out is required")
		fs.Usage()
		os.Exit(2)
	}
	if fs.NArg() != 0 {
		fmt.Fprintf(os.Stderr, "envtest: unexpected arguments: %q\n", fs.Args())
		os.Exit(2)
	}
	if o.logFile != "" {
		f, err := os.OpenFile(o.logFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		if err != nil {
			fmt.Fprintf(os.Stderr, "envtest: open log file: %v\n", err)
			os.Exit(2)
		}
		// Redirect fd 2 itself so klog, etcd's zap logger and Go panics all land there.
		if err := syscall.Dup3(int(f.Fd()), 2, 0); err != nil {
			fmt.Fprintf(os.Stderr, "envtest: redirect stderr: %v\n", err)
			os.Exit(2)
		}
	}
	os.Exit(run(o))
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "envtest: "+format+"\n", args...)
}

func run(o cliOptions) int {
	// The apiserver applies the logging configuration; the controller manager
	// shares the process and must not fail on a second, identical apply.
	logsapi.ReapplyHandling = logsapi.ReapplyHandlingIgnoreUnchanged

	start := time.Now()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	// Stop on SIGTERM/SIGINT; a second signal exits immediately.
	sigCh := make(chan os.Signal, 2)
	signal.Notify(sigCh, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	stopReason := make(chan string, 2)
	go func() {
		sig := <-sigCh
		stopReason <- "signal " + sig.String()
		<-sigCh
		logf("second signal, exiting immediately")
		os.Exit(1)
	}()
	if o.exitOnStdinEOF {
		go func() {
			_, _ = io.Copy(io.Discard, os.Stdin)
			stopReason <- "stdin closed"
		}()
	}

	parent := o.dataDir
	if parent == "" {
		parent = os.TempDir()
	}
	if err := os.MkdirAll(parent, 0o755); err != nil {
		logf("create data dir parent: %v", err)
		return 1
	}
	dataDir, err := os.MkdirTemp(parent, "envtest-")
	if err != nil {
		logf("create data dir: %v", err)
		return 1
	}
	cleanupData := func() {
		if o.keepData {
			logf("keeping data in %s", dataDir)
			return
		}
		if err := os.RemoveAll(dataDir); err != nil {
			logf("remove data dir: %v", err)
		}
	}
	logf("data dir %s", dataDir)

	defer klog.Flush()
	defer cleanupData()
	return runControlPlane(ctx, cancel, o, dataDir, start, stopReason)
}

func runControlPlane(ctx context.Context, cancel context.CancelFunc, o cliOptions, dataDir string, start time.Time, stopReason <-chan string) (exitCode int) {
	// A panic while wiring up the components must still stop etcd and remove
	// the data directory (deferred calls run before the recover returns).
	defer func() {
		if r := recover(); r != nil {
			logf("panic: %v\n%s", r, debug.Stack())
			exitCode = 1
		}
	}()

	runKCM := o.controllers != "" && o.controllers != "none"
	var cm *controllerManager
	if runKCM {
		var err error
		if cm, err = newControllerManager(); err != nil {
			logf("kube-controller-manager options: %v", err)
			return 1
		}
	}

	p, err := newPKI(filepath.Join(dataDir, "pki"))
	if err != nil {
		logf("generate credentials: %v", err)
		return 1
	}

	etcd, etcdURL, err := startEtcd(filepath.Join(dataDir, "etcd"))
	if err != nil {
		logf("%v", err)
		return 1
	}
	defer func() {
		etcd.Close()
		logf("etcd stopped")
	}()
	logf("etcd ready at %s (%.1fs)", etcdURL, time.Since(start).Seconds())

	listener, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", o.port))
	if err != nil {
		logf("listen for the API server: %v", err)
		return 1
	}
	serverURL := "https://" + listener.Addr().String()

	args := append(apiserverArgs(p, etcdURL, certDirFor(dataDir), o.verbosity), o.apiserverArgs...)
	apiDone, err := startAPIServer(ctx, listener, args)
	if err != nil {
		logf("start kube-apiserver: %v", err)
		listener.Close()
		return 1
	}

	kubeconfigOut, err := filepath.Abs(o.kubeconfigOut)
	if err != nil {
		logf("%v", err)
		return 1
	}
	if err := writeKubeconfig(kubeconfigOut, serverURL, p); err != nil {
		logf("write kubeconfig: %v", err)
		cancel()
		<-apiDone
		return 1
	}

	var kcmDone <-chan error
	client := httpClient(p)

	readyCtx, readyCancel := context.WithTimeout(ctx, o.readyTimeout)
	err = waitFor(readyCtx, apiDone, stopReason, func() bool {
		return get(client, serverURL+"/readyz", p.AdminToken) == http.StatusOK &&
			get(client, serverURL+"/api/v1/namespaces/default", p.AdminToken) == http.StatusOK
	})
	readyCancel()
	if err == nil {
		logf("kube-apiserver ready at %s (%.1fs)", serverURL, time.Since(start).Seconds())
		if runKCM {
			kcmArgs := append(controllerManagerArgs(kubeconfigOut, p, o.controllers, o.verbosity), o.kcmArgs...)
			kcmDone, err = cm.start(ctx, kcmArgs)
			if err != nil {
				err = fmt.Errorf("start kube-controller-manager: %w", err)
			}
		}
	}
	if err == nil && runKCM {
		// Wait until the controllers whose work tests see first have done it:
		// that also proves the controller manager is up and its informers synced.
		var checks []func() bool
		if controllerEnabled(o.controllers, "serviceaccount-controller", "serviceaccount") {
			checks = append(checks, func() bool {
				return get(client, serverURL+"/api/v1/namespaces/default/serviceaccounts/default", p.AdminToken) == http.StatusOK
			})
		}
		if controllerEnabled(o.controllers, "clusterrole-aggregation-controller", "clusterrole-aggregation") {
			checks = append(checks, func() bool { return hasRules(client, serverURL, p.AdminToken, "view") })
		}
		readyCtx, readyCancel := context.WithTimeout(ctx, o.readyTimeout)
		err = waitFor(readyCtx, apiDone, stopReason, func() bool {
			for _, c := range checks {
				if !c() {
					return false
				}
			}
			return true
		})
		readyCancel()
		if err == nil {
			logf("kube-controller-manager ready (%.1fs)", time.Since(start).Seconds())
		}
	}

	var reason string
	if err != nil {
		var stop stoppedError
		if errors.As(err, &stop) {
			reason = string(stop)
		} else {
			logf("not ready: %v", err)
			exitCode = 1
			reason = "startup failure"
		}
	} else {
		fmt.Fprintf(os.Stdout, "READY %s\n", kubeconfigOut)
		logf("READY %s (%.1fs after start; admin user %q in system:masters)", kubeconfigOut, time.Since(start).Seconds(), adminUser)
		select {
		case reason = <-stopReason:
		case err := <-apiDone:
			logf("kube-apiserver exited unexpectedly: %v", err)
			exitCode = 1
			reason = "apiserver exit"
			apiDone = nil
		case err := <-kcmDone:
			logf("kube-controller-manager exited unexpectedly: %v", err)
			exitCode = 1
			reason = "controller manager exit"
			kcmDone = nil
		case err := <-etcd.Err():
			logf("etcd failed: %v", err)
			exitCode = 1
			reason = "etcd failure"
		}
	}

	logf("shutting down (%s)", reason)
	cancel()
	waitDone("kube-controller-manager", kcmDone, 15*time.Second)
	waitDone("kube-apiserver", apiDone, 60*time.Second)
	return exitCode
}

type stoppedError string

func (s stoppedError) Error() string { return "stopped: " + string(s) }

// waitFor polls ready until it returns true, failing early if the API server
// exits, a stop is requested, or ctx expires.
func waitFor(ctx context.Context, apiDone <-chan error, stopReason <-chan string, ready func() bool) error {
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		if ready() {
			return nil
		}
		select {
		case err := <-apiDone:
			return fmt.Errorf("kube-apiserver exited: %v", err)
		case r := <-stopReason:
			return stoppedError(r)
		case <-ctx.Done():
			return fmt.Errorf("timed out waiting for the control plane: %w", ctx.Err())
		case <-tick.C:
		}
	}
}

func waitDone(name string, ch <-chan error, timeout time.Duration) {
	if ch == nil {
		return
	}
	select {
	case err, ok := <-ch:
		if ok && err != nil {
			logf("%s stopped: %v", name, err)
		} else {
			logf("%s stopped", name)
		}
	case <-time.After(timeout):
		logf("%s did not stop within %s", name, timeout)
	}
}

func httpClient(p *pki) *http.Client {
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(p.CACert)
	return &http.Client{
		Timeout: 5 * time.Second,
		Transport: &http.Transport{
			TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12},
		},
	}
}

// controllerEnabled reports whether a --controllers list turns on the
// controller with the given name (or alias) explicitly or through "*".
func controllerEnabled(list, name, alias string) bool {
	enabled := false
	for _, c := range strings.Split(list, ",") {
		switch strings.TrimSpace(c) {
		case name, alias, "*":
			enabled = true
		case "-" + name, "-" + alias:
			return false
		}
	}
	return enabled
}

// hasRules reports whether the aggregated ClusterRole has been filled in.
func hasRules(c *http.Client, serverURL, token, role string) bool {
	req, err := http.NewRequest(http.MethodGet, serverURL+"/apis/rbac.authorization.k8s.io/v1/clusterroles/"+role, nil)
	if err != nil {
		return false
	}
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := c.Do(req)
	if err != nil {
		return false
	}
	defer resp.Body.Close()
	var cr struct {
		Rules []json.RawMessage `json:"rules"`
	}
	if resp.StatusCode != http.StatusOK || json.NewDecoder(resp.Body).Decode(&cr) != nil {
		return false
	}
	return len(cr.Rules) > 0
}

func get(c *http.Client, url, token string) int {
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		return 0
	}
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := c.Do(req)
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode
}
