// Package kubeapi starts a real Kubernetes API server for tests: etcd and
// kube-apiserver on loopback, with RBAC, a token for an admin user and a
// kubeconfig for kubectl. There is no kubelet, scheduler or controller
// manager: objects are validated, admitted and stored exactly as a cluster
// would, but no pod ever runs.
//
// The binaries are built from Go modules by scripts/kube-tools.sh (which
// ./scripts/test.sh runs in its install phase) into the user's cache
// directory; Start fails the test, never skips it, when they are missing.
package kubeapi

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Tools are the binaries scripts/kube-tools.sh builds.
type Tools struct {
	Etcd          string // etcd binary
	KubeAPIServer string // kube-apiserver binary
	Kubectl       string // kubectl binary
}

// installHint is what a test failing for want of the tools tells the reader.
const installHint = "run ./scripts/test.sh --install-only (it builds them with scripts/kube-tools.sh)"

// RepoRoot is the directory holding go.mod, found from the working
// directory up (go test runs a package's tests in the package directory).
func RepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.mod above the working directory")
		}
		dir = parent
	}
}

// FindTools asks scripts/kube-tools.sh where it puts the tools, so the
// versions live in one place, and checks that they are there.
func FindTools(tb testing.TB) Tools {
	tb.Helper()
	root, err := RepoRoot()
	if err != nil {
		tb.Fatalf("kubeapi: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "bash", filepath.Join(root, "scripts", "kube-tools.sh"), "--print").Output()
	if err != nil {
		tb.Fatalf("kubeapi: scripts/kube-tools.sh --print: %v", err)
	}
	dirs := strings.Fields(string(out))
	if len(dirs) != 2 {
		tb.Fatalf("kubeapi: scripts/kube-tools.sh --print gave %q, want two directories", out)
	}
	t := Tools{
		KubeAPIServer: filepath.Join(dirs[0], "kube-apiserver"),
		Kubectl:       filepath.Join(dirs[0], "kubectl"),
		Etcd:          filepath.Join(dirs[1], "etcd"),
	}
	for _, p := range []string{t.KubeAPIServer, t.Kubectl, t.Etcd} {
		if _, err := os.Stat(p); err != nil {
			tb.Fatalf("kubeapi: %s is missing: %s", p, installHint)
		}
	}
	return t
}

// Server is a running kube-apiserver on its own etcd.
type Server struct {
	URL        string // https://127.0.0.1:port
	Kubeconfig string // a kubeconfig for the admin user (group system:masters)
	Dir        string // holds the keys, the kubeconfig and the two logs
	Tools      Tools
	// StartupTime is how long kube-apiserver took from exec to /readyz.
	StartupTime time.Duration

	token   string
	etcdURL string // etcd's client URL, for the API server
	procs   []*process
}

// Start launches etcd and kube-apiserver for the test and removes both,
// and their data, at its end.
func Start(tb testing.TB) *Server {
	tb.Helper()
	tools := FindTools(tb)
	s := &Server{Dir: tb.TempDir(), Tools: tools}
	tb.Cleanup(func() {
		if tb.Failed() {
			for _, p := range s.procs {
				tb.Logf("kubeapi: end of the %s log:\n%s", p.name, p.tail())
			}
		}
		s.stop()
	})
	if err := s.writeCredentials(); err != nil {
		tb.Fatalf("kubeapi: %v", err)
	}
	var err error
	for range 3 { // a free port can be taken between the check and the bind
		if err = s.startEtcd(); err == nil {
			break
		}
	}
	if err != nil {
		tb.Fatalf("kubeapi: %v", err)
	}
	for range 3 {
		if err = s.startAPIServer(); err == nil {
			break
		}
	}
	if err != nil {
		tb.Fatalf("kubeapi: %v", err)
	}
	return s
}

// Env is the environment kubectl runs in: the kubeconfig, a cache inside
// the server's directory, and this kubectl first on PATH, so a command
// copied from the README finds it.
func (s *Server) Env() []string {
	env := os.Environ()
	env = append(env,
		"KUBECONFIG="+s.Kubeconfig,
		"KUBECACHEDIR="+filepath.Join(s.Dir, "kubecache"),
		"PATH="+filepath.Dir(s.Tools.Kubectl)+string(os.PathListSeparator)+os.Getenv("PATH"),
	)
	return env
}

// Kubectl runs kubectl with args in dir and returns its standard output;
// the error carries its standard error.
func (s *Server) Kubectl(ctx context.Context, dir string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, s.Tools.Kubectl, args...)
	return s.run(cmd, dir)
}

// Shell runs a command line with bash in dir, as an operator would type it
// (quotes and all), with kubectl on PATH pointing at this server. It
// returns the standard output and the standard error (where kubectl prints
// the API server's warnings).
func (s *Server) Shell(ctx context.Context, dir, line string) (stdout, stderr []byte, err error) {
	return s.runBoth(exec.CommandContext(ctx, "bash", "-c", line), dir)
}

func (s *Server) run(cmd *exec.Cmd, dir string) ([]byte, error) {
	stdout, _, err := s.runBoth(cmd, dir)
	return stdout, err
}

func (s *Server) runBoth(cmd *exec.Cmd, dir string) ([]byte, []byte, error) {
	cmd.Dir = dir
	cmd.Env = s.Env()
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Run(); err != nil {
		return stdout.Bytes(), stderr.Bytes(), fmt.Errorf("%s: %w: %s", strings.Join(cmd.Args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.Bytes(), stderr.Bytes(), nil
}

// process is one child: its command and where its output goes.
type process struct {
	name string
	cmd  *exec.Cmd
	log  string
	done chan struct{}
}

func (s *Server) spawn(name string, bin string, args ...string) (*process, error) {
	logPath := filepath.Join(s.Dir, name+".log")
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	// The child dies with the test binary even if no cleanup runs.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	p := &process{name: name, cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		logf.Close()
		close(p.done)
	}()
	s.procs = append(s.procs, p)
	return p, nil
}

// exited reports whether the process has ended.
func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// kill stops the process (SIGTERM, then SIGKILL after 10 s) and waits.
func (p *process) kill() {
	if p.exited() {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// tail is the end of the process's log, for error messages.
func (p *process) tail() string {
	b, _ := os.ReadFile(p.log)
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return string(b)
}

// PIDs are the process ids of etcd and kube-apiserver while they run.
func (s *Server) PIDs() []int {
	var pids []int
	for _, p := range s.procs {
		pids = append(pids, p.cmd.Process.Pid)
	}
	return pids
}

// stop ends the processes in reverse order of start: the API server before
// its etcd.
func (s *Server) stop() {
	for i := len(s.procs) - 1; i >= 0; i-- {
		s.procs[i].kill()
	}
	s.procs = nil
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func (s *Server) startEtcd() error {
	client, err := freePort()
	if err != nil {
		return err
	}
	peer, err := freePort()
	if err != nil {
		return err
	}
	clientURL := "http://127.0.0.1:" + strconv.Itoa(client)
	peerURL := "http://127.0.0.1:" + strconv.Itoa(peer)
	dataDir := filepath.Join(s.Dir, "etcd-data")
	_ = os.RemoveAll(dataDir)
	p, err := s.spawn("etcd", s.Tools.Etcd,
		"--name=test",
		"--data-dir="+dataDir,
		"--listen-client-urls="+clientURL,
		"--advertise-client-urls="+clientURL,
		"--listen-peer-urls="+peerURL,
		"--initial-advertise-peer-urls="+peerURL,
		"--initial-cluster=test="+peerURL,
		"--log-level=warn",
		// A test's data need not survive a crash of the machine.
		"--unsafe-no-fsync",
	)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err = waitHTTP(ctx, p, http.DefaultClient, clientURL+"/health", "")
	if err != nil {
		p.kill()
		s.procs = s.procs[:len(s.procs)-1]
		return fmt.Errorf("etcd not ready: %w\n%s", err, p.tail())
	}
	s.etcdURL = clientURL
	return nil
}

func (s *Server) startAPIServer() error {
	port, err := freePort()
	if err != nil {
		return err
	}
	f := func(name string) string { return filepath.Join(s.Dir, name) }
	start := time.Now()
	p, err := s.spawn("kube-apiserver", s.Tools.KubeAPIServer,
		"--etcd-servers="+s.etcdURL,
		"--bind-address=127.0.0.1",
		"--advertise-address=127.0.0.1",
		"--secure-port="+strconv.Itoa(port),
		"--tls-cert-file="+f("serving.crt"),
		"--tls-private-key-file="+f("serving.key"),
		"--token-auth-file="+f("tokens.csv"),
		"--authorization-mode=RBAC",
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file="+f("sa.pub"),
		"--service-account-signing-key-file="+f("sa.key"),
		// Addresses to allocate Service IPs from: numbers in etcd, nothing
		// routes to them.
		"--service-cluster-ip-range=10.96.0.0/16",
		// The ServiceAccount admission plugin rejects a pod whose namespace
		// has no "default" ServiceAccount; the controller manager that
		// creates it is not run here. The manifests' own ServiceAccount
		// references are checked by the tests instead.
		"--disable-admission-plugins=ServiceAccount",
		"--profiling=false",
		"--v=0",
	)
	if err != nil {
		return err
	}
	s.URL = "https://127.0.0.1:" + strconv.Itoa(port)
	ca, err := os.ReadFile(f("ca.crt"))
	if err != nil {
		return err
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca)
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	defer client.CloseIdleConnections()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	if err := waitHTTP(ctx, p, client, s.URL+"/readyz", s.token); err != nil {
		p.kill()
		s.procs = s.procs[:len(s.procs)-1]
		return fmt.Errorf("kube-apiserver not ready: %w\n%s", err, p.tail())
	}
	s.StartupTime = time.Since(start)
	return s.writeKubeconfig(ca)
}

// waitHTTP polls url until it answers 200 or p exits.
func waitHTTP(ctx context.Context, p *process, client *http.Client, url, token string) error {
	var last error
	for {
		if p.exited() {
			return fmt.Errorf("%s exited", p.name)
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return err
		}
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		resp, err := client.Do(req.WithContext(rctx))
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				cancel()
				return nil
			}
			err = fmt.Errorf("%s: %s", url, resp.Status)
		}
		cancel()
		last = err
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (last: %v)", ctx.Err(), last)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// writeCredentials makes what the API server needs to start: a CA and a
// serving certificate for 127.0.0.1, the service-account signing key pair,
// and a token file with one admin user.
func (s *Server) writeCredentials() error {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "kubeapi test CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return err
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		return err
	}
	servingKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	servingDER, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "kube-apiserver"},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1), net.ParseIP("10.96.0.1")},
		DNSNames:     []string{"localhost", "kubernetes", "kubernetes.default.svc"},
	}, caCert, &servingKey.PublicKey, caKey)
	if err != nil {
		return err
	}
	servingKeyDER, err := x509.MarshalECPrivateKey(servingKey)
	if err != nil {
		return err
	}
	// RSA: the API server's service-account token signer wants an RSA or
	// ECDSA key; RSA is what kubeadm makes.
	saKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return err
	}
	saPub, err := x509.MarshalPKIXPublicKey(&saKey.PublicKey)
	if err != nil {
		return err
	}
	tok := make([]byte, 24)
	if _, err := rand.Read(tok); err != nil {
		return err
	}
	s.token = base64.RawURLEncoding.EncodeToString(tok)
	files := map[string][]byte{
		"ca.crt":      pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}),
		"serving.crt": pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: servingDER}),
		"serving.key": pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: servingKeyDER}),
		"sa.key":      pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(saKey)}),
		"sa.pub":      pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: saPub}),
		// token,user,uid,"groups"
		"tokens.csv": []byte(s.token + `,admin,admin,"system:masters"` + "\n"),
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(s.Dir, name), data, 0o600); err != nil {
			return err
		}
	}
	return nil
}

func (s *Server) writeKubeconfig(ca []byte) error {
	s.Kubeconfig = filepath.Join(s.Dir, "kubeconfig")
	cfg := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: test
  cluster:
    server: %s
    certificate-authority-data: %s
users:
- name: admin
  user:
    token: %s
contexts:
- name: test
  context:
    cluster: test
    user: admin
current-context: test
`, s.URL, base64.StdEncoding.EncodeToString(ca), s.token)
	return os.WriteFile(s.Kubeconfig, []byte(cfg), 0o600)
}
