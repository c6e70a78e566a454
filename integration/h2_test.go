//go:build integration

package integration

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// selfSigned writes a self-signed certificate for 127.0.0.1 and its key
// in dir and returns their paths and a pool that trusts the certificate.
func selfSigned(t *testing.T, dir string) (certFile, keyFile string, pool *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "handoff test"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IsCA:                  true,
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	pool = x509.NewCertPool()
	pool.AddCert(cert)
	return certFile, keyFile, pool
}

// h2Post sends a POST over HTTP/2 with Go's client. Every error RoundTrip
// returns counts, and every answer that is not a 200 over HTTP/2. (The
// transport itself may send a request again on a new connection when a
// GOAWAY says the server never processed it, as the protocol allows;
// RoundTrip then succeeds.)
func h2Post(tr *http.Transport, url string) error { return postOver(tr, url, 2) }

// upgradeAlternating installs the i-th upgrade's build (v2, v1, v2, …)
// and reloads to it.
func upgradeAlternating(t *testing.T, s *service, i int) {
	t.Helper()
	bin := helloV2
	if i%2 == 1 {
		bin = helloV1
	}
	install(t, bin, s.exe)
	s.reload()
}

// postOver sends a POST with a body over tr and wants a 200 over HTTP
// major version major. Go's transport does not send a POST again on its
// own, so a connection closed under it counts.
func postOver(tr *http.Transport, url string, major int) error {
	req, err := http.NewRequest("POST", url, strings.NewReader("payload="+strings.Repeat("x", 64)))
	if err != nil {
		return err
	}
	resp, err := tr.RoundTrip(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if _, err := io.Copy(io.Discard, resp.Body); err != nil {
		return fmt.Errorf("read body: %w", err)
	}
	if resp.StatusCode != 200 || resp.ProtoMajor != major {
		return fmt.Errorf("answer %s over %s, want 200 over HTTP/%d", resp.Status, resp.Proto, major)
	}
	return nil
}

// h2Healthz returns the pid that answers GET /healthz over tr.
func h2Healthz(t *testing.T, tr *http.Transport, addr string) (pid, gen int) {
	t.Helper()
	req, _ := http.NewRequest("GET", "https://"+addr+"/healthz", nil)
	resp, err := tr.RoundTrip(req)
	if err != nil {
		t.Fatalf("GET /healthz: %v", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if m := healthzPID.FindSubmatch(b); m != nil {
		fmt.Sscan(string(m[1]), &pid)
	}
	if m := healthzGen.FindSubmatch(b); m != nil {
		fmt.Sscan(string(m[1]), &gen)
	}
	return pid, gen
}

// Row 15: HTTP/2 over TLS through 3 upgrades: the old generation sends
// GOAWAY, so that new streams go to the new generation, and lets the
// streams it has finish; no RoundTrip fails.
func TestFaultHTTP2GoAway(t *testing.T) {
	forEachMode(t, func(t *testing.T, m workerMode) {
		certFile, keyFile, pool := selfSigned(t, t.TempDir())
		s := startHello(t, helloV1, append(m.args, "--tls-cert", certFile, "--tls-key", keyFile)...)
		tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}, ForceAttemptHTTP2: true}
		defer tr.CloseIdleConnections()
		url := "https://" + s.addr + "/"
		l := startClients(50, func(int, int) error { return h2Post(tr, url) })
		l.advance(t, 500)

		// A stream in flight on the first generation: its body is half sent.
		pid1, _ := h2Healthz(t, tr, s.addr)
		pr, pw := io.Pipe()
		req, _ := http.NewRequest("POST", url, pr)
		held := make(chan error, 1)
		go func() {
			resp, err := tr.RoundTrip(req)
			if err == nil {
				_, err = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if err == nil && (resp.StatusCode != 200 || resp.ProtoMajor != 2) {
					err = fmt.Errorf("answer %s over %s", resp.Status, resp.Proto)
				}
			}
			held <- err
		}()
		io.WriteString(pw, "half")

		for i := range 3 {
			upgradeAlternating(t, s, i)
			if i == 0 {
				// GOAWAY: new streams reach the new generation while the
				// old one still holds the stream in flight.
				tick := time.NewTicker(10 * time.Millisecond)
				for pid, gen := h2Healthz(t, tr, s.addr); gen != 2; pid, gen = h2Healthz(t, tr, s.addr) {
					if time.Now().After(deadline(t)) {
						t.Fatalf("GET /healthz still answered by generation %d (pid %d), not 2: no GOAWAY from the old generation", gen, pid)
					}
					<-tick.C
				}
				tick.Stop()
				select {
				case err := <-held:
					t.Fatalf("stream in flight ended before its body: %v", err)
				default:
				}
				io.WriteString(pw, "done")
				pw.Close()
				if err := <-held; err != nil {
					t.Errorf("stream in flight on pid %d: %v, want 200", pid1, err)
				}
			}
			l.advance(t, 500)
		}
		s.log.waitFor(t, 0, "previous generation exited", "generation=4")
		l.finish(t, "HTTP/2 load")
		if strings.Contains(s.log.String(), "connections cut") {
			t.Errorf("a drain cut connections:\n%s", s.log)
		}
	})
}
