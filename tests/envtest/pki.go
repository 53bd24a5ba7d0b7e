package main

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// pki holds every credential file the control plane needs. All of it is
// generated fresh for each run and lives in the data directory.
type pki struct {
	Dir string

	CACert     []byte // PEM of the cluster CA (signs the serving cert and client certs)
	CACertFile string
	CAKeyFile  string

	ServingCertFile string
	ServingKeyFile  string

	AdminCertFile string // client cert CN=portcullis-admin O=system:masters
	AdminKeyFile  string

	SAKeyFile string // RSA key: signs and verifies ServiceAccount tokens

	TokenFile         string // --token-auth-file
	AdminToken        string
	UnprivilegedToken string
}

const (
	adminUser        = "portcullis-admin"
	unprivilegedUser = "portcullis-unprivileged"
)

func newPKI(dir string) (*pki, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	p := &pki{
		Dir:             dir,
		CACertFile:      filepath.Join(dir, "ca.crt"),
		CAKeyFile:       filepath.Join(dir, "ca.key"),
		ServingCertFile: filepath.Join(dir, "apiserver.crt"),
		ServingKeyFile:  filepath.Join(dir, "apiserver.key"),
		AdminCertFile:   filepath.Join(dir, "admin.crt"),
		AdminKeyFile:    filepath.Join(dir, "admin.key"),
		SAKeyFile:       filepath.Join(dir, "sa.key"),
		TokenFile:       filepath.Join(dir, "tokens.csv"),
	}

	notBefore := time.Now().Add(-time.Hour)
	notAfter := time.Now().Add(10 * 365 * 24 * time.Hour)

	// Cluster CA.
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	caTmpl := &x509.Certificate{
		SerialNumber:          randSerial(),
		Subject:               pkix.Name{CommonName: "portcullis-envtest-ca"},
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, caKey.Public(), caKey)
	if err != nil {
		return nil, err
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		return nil, err
	}
	p.CACert = pemCert(caDER)
	if err := writeFile(p.CACertFile, p.CACert); err != nil {
		return nil, err
	}
	if err := writeKey(p.CAKeyFile, caKey); err != nil {
		return nil, err
	}

	// Serving certificate: a leaf (not the CA itself, which rustls/webpki
	// would reject as CaUsedAsEndEntity) for every name a client may dial.
	servingTmpl := &x509.Certificate{
		SerialNumber: randSerial(),
		Subject:      pkix.Name{CommonName: "kube-apiserver"},
		NotBefore:    notBefore,
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames: []string{
			"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
			"kubernetes.default.svc.cluster.local",
		},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("::1"), net.ParseIP("10.0.0.1")},
	}
	if err := p.issue(servingTmpl, caCert, caKey, p.ServingCertFile, p.ServingKeyFile); err != nil {
		return nil, err
	}

	// Admin client certificate (alternative to the bearer token).
	adminTmpl := &x509.Certificate{
		SerialNumber: randSerial(),
		Subject:      pkix.Name{CommonName: adminUser, Organization: []string{"system:masters"}},
		NotBefore:    notBefore,
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	if err := p.issue(adminTmpl, caCert, caKey, p.AdminCertFile, p.AdminKeyFile); err != nil {
		return nil, err
	}

	// ServiceAccount token signing key (RS256, the default algorithm).
	saKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, err
	}
	if err := writeFile(p.SAKeyFile, pem.EncodeToMemory(&pem.Block{
		Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(saKey),
	})); err != nil {
		return nil, err
	}

	// Static bearer tokens: token,user,uid,"group1,group2".
	p.AdminToken = randToken()
	p.UnprivilegedToken = randToken()
	tokens := fmt.Sprintf("%s,%s,%s,\"system:masters\"\n%s,%s,%s\n",
		p.AdminToken, adminUser, adminUser,
		p.UnprivilegedToken, unprivilegedUser, unprivilegedUser)
	if err := writeFile(p.TokenFile, []byte(tokens)); err != nil {
		return nil, err
	}
	return p, nil
}

func (p *pki) issue(tmpl, ca *x509.Certificate, caKey crypto.Signer, certFile, keyFile string) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, key.Public(), caKey)
	if err != nil {
		return err
	}
	if err := writeFile(certFile, pemCert(der)); err != nil {
		return err
	}
	return writeKey(keyFile, key)
}

func pemCert(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

// writeKey writes an EC key as PKCS#8 ("PRIVATE KEY"), the form every TLS
// stack (Go, rustls-pemfile, OpenSSL) accepts.
func writeKey(path string, key *ecdsa.PrivateKey) error {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	return writeFile(path, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))
}

func writeFile(path string, data []byte) error {
	return os.WriteFile(path, data, 0o600)
}

func randSerial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		panic(err)
	}
	return n.Add(n, big.NewInt(1))
}

func randToken() string {
	b := make([]byte, 24)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}
