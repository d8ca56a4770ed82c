package localcluster

import (
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"net"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

func parseCert(t *testing.T, data []byte) *x509.Certificate {
	t.Helper()
	block, _ := pem.Decode(data)
	if block == nil || block.Type != "CERTIFICATE" {
		t.Fatalf("not a PEM certificate: %q", data)
	}
	c, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestPKI(t *testing.T) {
	svcIP := net.ParseIP("10.96.0.1")
	p, err := newPKI(svcIP)
	if err != nil {
		t.Fatal(err)
	}
	ca := parseCert(t, p.CACert)
	if !ca.IsCA {
		t.Fatal("CA certificate is not a CA")
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca)

	// The serving certificate is valid for every name a client may use.
	serving := parseCert(t, p.ServingCert)
	for _, name := range []string{"127.0.0.1", "::1", "localhost", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local", svcIP.String()} {
		if _, err := serving.Verify(x509.VerifyOptions{DNSName: name, Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
			t.Errorf("serving certificate for %s: %v", name, err)
		}
	}
	if _, err := tls.X509KeyPair(p.ServingCert, p.ServingKey); err != nil {
		t.Errorf("serving key does not match its certificate: %v", err)
	}

	// The admin certificate is a client certificate in group system:masters.
	admin := parseCert(t, p.AdminCert)
	if _, err := admin.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("admin certificate: %v", err)
	}
	if !slices.Contains(admin.Subject.Organization, "system:masters") {
		t.Errorf("admin certificate organizations %v lack system:masters", admin.Subject.Organization)
	}
	if _, err := admin.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err == nil {
		t.Error("admin certificate is usable as a serving certificate")
	}
	if _, err := tls.X509KeyPair(p.AdminCert, p.AdminKey); err != nil {
		t.Errorf("admin key does not match its certificate: %v", err)
	}

	// The service-account public key is the signing key's.
	keyBlock, _ := pem.Decode(p.ServiceAccountKey)
	priv, err := x509.ParseECPrivateKey(keyBlock.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	pubBlock, _ := pem.Decode(p.SAPublic)
	pub, err := x509.ParsePKIXPublicKey(pubBlock.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if !priv.PublicKey.Equal(pub.(*ecdsa.PublicKey)) {
		t.Error("service-account public key does not match the signing key")
	}

	// Two clusters never share keys.
	q, err := newPKI(nil)
	if err != nil {
		t.Fatal(err)
	}
	if string(q.CAKey) == string(p.CAKey) {
		t.Error("two PKIs share a CA key")
	}
}

func TestPKIWriteKeepsKeysPrivate(t *testing.T) {
	p, err := newPKI(nil)
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "pki")
	if err := p.write(dir); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"ca.key", "apiserver.key", "admin.key", "sa.key"} {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm()&0o077 != 0 {
			t.Errorf("%s has mode %v, want no group/other access", name, fi.Mode().Perm())
		}
	}
}
