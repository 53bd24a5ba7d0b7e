package main

import (
	"os"
	"path/filepath"

	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

const (
	clusterName             = "envtest"
	contextAdmin            = "envtest"              // current-context: bearer token, system:masters
	contextAdminCert        = "envtest-admin-cert"   // same identity via client certificate
	contextUnprivileged     = "envtest-unprivileged" // authenticated, no RBAC bindings
	userAdmin               = "admin"
	userAdminCert           = "admin-cert"
	userUnprivilegedCfgName = "unprivileged"
)

// writeKubeconfig writes a self-contained kubeconfig (all credentials inline,
// no references to files in the data directory) atomically to path.
func writeKubeconfig(path, server string, p *pki) error {
	adminCert, err := os.ReadFile(p.AdminCertFile)
	if err != nil {
		return err
	}
	adminKey, err := os.ReadFile(p.AdminKeyFile)
	if err != nil {
		return err
	}
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters[clusterName] = &clientcmdapi.Cluster{
		Server:                   server,
		CertificateAuthorityData: p.CACert,
	}
	cfg.AuthInfos[userAdmin] = &clientcmdapi.AuthInfo{Token: p.AdminToken}
	cfg.AuthInfos[userAdminCert] = &clientcmdapi.AuthInfo{
		ClientCertificateData: adminCert,
		ClientKeyData:         adminKey,
	}
	cfg.AuthInfos[userUnprivilegedCfgName] = &clientcmdapi.AuthInfo{Token: p.UnprivilegedToken}
	cfg.Contexts[contextAdmin] = &clientcmdapi.Context{Cluster: clusterName, AuthInfo: userAdmin, Namespace: "default"}
	cfg.Contexts[contextAdminCert] = &clientcmdapi.Context{Cluster: clusterName, AuthInfo: userAdminCert, Namespace: "default"}
	cfg.Contexts[contextUnprivileged] = &clientcmdapi.Context{Cluster: clusterName, AuthInfo: userUnprivilegedCfgName, Namespace: "default"}
	cfg.CurrentContext = contextAdmin

	data, err := clientcmd.Write(*cfg)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".kubeconfig-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}
