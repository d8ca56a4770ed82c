package localcluster

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/hapod/hapod/internal/dev/netplan"
)

// pki holds the certificates and keys of one cluster, PEM-encoded, and where they are
// written in the run directory.
type pki struct {
	CACert, CAKey               []byte // cluster CA: signs serving and client certs
	ServingCert, ServingKey     []byte // kube-apiserver's serving certificate
	AdminCert, AdminKey         []byte // client certificate in group system:masters
	ServiceAccountKey, SAPublic []byte // signs and verifies service account tokens

	Dir string
}

func (p *pki) path(name string) string { return filepath.Join(p.Dir, name) }

// apiserverSANs are the names a client may use for the API server.
var (
	apiserverDNSNames = []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
		"kubernetes.default.svc.cluster.local"}
	// real-node-1's IP: pods on real nodes reach the API server there
	// (Cluster.WritePodKubeconfig).
	apiserverIPs = []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("::1"), netplan.RealNodeIP(1).AsSlice()}
)

// newPKI generates a CA, a serving certificate for the API server valid for
// apiserverDNSNames, apiserverIPs and serviceIP, an admin client certificate (O=system:masters)
// and a service-account key pair. ECDSA P-256 keys: fast to make, accepted by every
// component.
func newPKI(serviceIP net.IP) (*pki, error) {
	now := time.Now()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	caTmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: "hapod-local-cluster-ca"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(10 * 365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, caKey.Public(), caKey)
	if err != nil {
		return nil, fmt.Errorf("create CA certificate: %w", err)
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return nil, err
	}
	p := &pki{CACert: pemBlock("CERTIFICATE", caDER)}
	if p.CAKey, err = pemKey(caKey); err != nil {
		return nil, err
	}

	ips := append([]net.IP{}, apiserverIPs...)
	if serviceIP != nil {
		ips = append(ips, serviceIP)
	}
	p.ServingCert, p.ServingKey, err = leaf(ca, caKey, &x509.Certificate{
		Subject:     pkix.Name{CommonName: "kube-apiserver"},
		DNSNames:    apiserverDNSNames,
		IPAddresses: ips,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	})
	if err != nil {
		return nil, fmt.Errorf("create serving certificate: %w", err)
	}
	p.AdminCert, p.AdminKey, err = leaf(ca, caKey, &x509.Certificate{
		Subject:     pkix.Name{CommonName: "hapod-admin", Organization: []string{"system:masters"}},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
	if err != nil {
		return nil, fmt.Errorf("create admin client certificate: %w", err)
	}

	saKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	if p.ServiceAccountKey, err = pemKey(saKey); err != nil {
		return nil, err
	}
	pub, err := x509.MarshalPKIXPublicKey(saKey.Public())
	if err != nil {
		return nil, err
	}
	p.SAPublic = pemBlock("PUBLIC KEY", pub)
	return p, nil
}

// leaf signs tmpl (filled in with serial, validity and key usage) with the CA.
func leaf(ca *x509.Certificate, caKey crypto.Signer, tmpl *x509.Certificate) (certPEM, keyPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	tmpl.SerialNumber = serial()
	tmpl.NotBefore = ca.NotBefore
	tmpl.NotAfter = ca.NotAfter
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, key.Public(), caKey)
	if err != nil {
		return nil, nil, err
	}
	keyPEM, err = pemKey(key)
	return pemBlock("CERTIFICATE", der), keyPEM, err
}

func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 126))
	if err != nil {
		panic(err) // crypto/rand does not fail on Linux
	}
	return n
}

func pemBlock(typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}

func pemKey(key *ecdsa.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, err
	}
	return pemBlock("EC PRIVATE KEY", der), nil
}

// write stores every file under dir; keys are readable by the owner only.
func (p *pki) write(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	p.Dir = dir
	for name, data := range map[string][]byte{
		"ca.crt": p.CACert, "ca.key": p.CAKey,
		"apiserver.crt": p.ServingCert, "apiserver.key": p.ServingKey,
		"admin.crt": p.AdminCert, "admin.key": p.AdminKey,
		"sa.key": p.ServiceAccountKey, "sa.pub": p.SAPublic,
	} {
		if err := os.WriteFile(p.path(name), data, 0o600); err != nil {
			return err
		}
	}
	return nil
}
