package deploy_test

// The deployment suite on a real Kubernetes API server: each overlay is
// applied with the README's own commands (internal/testkit/kubeapi runs etcd
// and kube-apiserver, no kubelet), then every object is read back and its
// namespace and references are checked against what the API server holds.
// Mutated copies of the manifests prove that the same path rejects what it
// should.

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"

	"github.com/stargazer/stargazer-jobs/internal/testkit/kubeapi"
)

// kubeSectionHeading opens the README's step-by-step install; the suite
// runs the commands of that section, so the README and the test cannot
// drift apart.
const kubeSectionHeading = "### From `kubectl apply -k` to the dashboard"

// readmeCommand is one command line of the README's Kubernetes section.
type readmeCommand struct {
	step int    // the numbered step, 0 for the paragraphs after the list
	line string // the command as the README prints it
	text string // the whole step (or paragraph), whitespace collapsed
}

var (
	readmeCommandRe = regexp.MustCompile("`((?:kubectl|kind|helm|docker) [^`]+)`")
	readmeStepRe    = regexp.MustCompile(`^(\d+)\.\s`)
	overlayArgRe    = regexp.MustCompile(`-k deploy/kubernetes/overlays/([a-z-]+)`)
)

// runHere are the README commands the suite runs, by prefix: everything an
// operator types that an API server without nodes can answer.
var runHere = []string{
	"kubectl create namespace ",
	"kubectl -n stargazer run ",
	"kubectl -n stargazer create secret generic ",
	"kubectl apply --server-side --dry-run=server -k deploy/kubernetes/overlays/",
	"kubectl apply --server-side -k deploy/kubernetes/overlays/",
}

// notRunHere are the README commands the suite cannot run, each with why
// and what stands in for it. A README command in neither list fails the
// suite: a new step gets run or explained.
var notRunHere = []struct{ prefix, why string }{
	{"kind ", "makes a cluster with nodes; the suite's etcd and kube-apiserver stand in for it"},
	{"helm install kube-prometheus-stack ", "installs the Prometheus Operator from a chart registry; the suite installs its PodMonitor, ServiceMonitor and PrometheusRule CRDs (deploy/third_party)"},
	{"docker build ", "builds images; no kubelet pulls or runs them here"},
	{"kubectl -n stargazer rollout status ", "waits for pods to run; there is no kubelet"},
	{"kubectl -n stargazer port-forward ", "needs a running pod"},
	{"kubectl -n monitoring port-forward ", "needs the Prometheus stack running"},
	{"kubectl apply --server-side -f https://github.com/kedacore/keda/", "downloads KEDA's release; the suite installs its ScaledObject CRD (deploy/third_party)"},
}

// readmeKubeCommands extracts the command lines of the README's Kubernetes
// section, in order.
func readmeKubeCommands(t testing.TB) []readmeCommand {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(repoRoot, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	s := string(data)
	i := strings.Index(s, kubeSectionHeading)
	if i < 0 {
		t.Fatalf("README.md has no section %q", kubeSectionHeading)
	}
	s = s[i+len(kubeSectionHeading):]
	if j := strings.Index(s, "\n### "); j >= 0 {
		s = s[:j]
	}
	type block struct {
		step int
		text string
	}
	var blocks []block
	prevBlank := true
	for _, line := range strings.Split(s, "\n") {
		switch m := readmeStepRe.FindStringSubmatch(line); {
		case m != nil:
			n, _ := strconv.Atoi(m[1])
			blocks = append(blocks, block{n, line})
		case strings.TrimSpace(line) == "":
			prevBlank = true
			continue
		case len(blocks) > 0 && (!prevBlank || (blocks[len(blocks)-1].step > 0 && strings.HasPrefix(line, " "))):
			blocks[len(blocks)-1].text += "\n" + line
		default:
			blocks = append(blocks, block{0, line})
		}
		prevBlank = false
	}
	var cmds []readmeCommand
	for _, b := range blocks {
		text := strings.Join(strings.Fields(b.text), " ")
		for _, m := range readmeCommandRe.FindAllStringSubmatch(text, -1) {
			cmds = append(cmds, readmeCommand{step: b.step, line: m[1], text: text})
		}
	}
	if len(cmds) == 0 {
		t.Fatalf("README section %q has no commands", kubeSectionHeading)
	}
	return cmds
}

// runs reports whether the suite runs c, and fails the test for a command
// it neither runs nor explains.
func (c readmeCommand) runs(t testing.TB) bool {
	t.Helper()
	for _, p := range runHere {
		if strings.HasPrefix(c.line, p) {
			return true
		}
	}
	for _, n := range notRunHere {
		if strings.HasPrefix(c.line, n.prefix) {
			return false
		}
	}
	t.Fatalf("README step %d: %q is neither run by this suite (runHere) nor explained (notRunHere)", c.step, c.line)
	return false
}

func (c readmeCommand) overlay() string {
	if m := overlayArgRe.FindStringSubmatch(c.line); m != nil {
		return m[1]
	}
	return ""
}

// readmePlan is what the README tells an operator, as the suite uses it.
type readmePlan struct {
	commands   []readmeCommand
	namespace  string          // from `kubectl create namespace`
	secret     string          // the Secret the README creates
	secretKeys map[string]bool // keys the README documents for it (created or named in its step)
	text       string          // the whole README, for "the operator's" mentions
}

func loadReadmePlan(t testing.TB) readmePlan {
	t.Helper()
	p := readmePlan{commands: readmeKubeCommands(t), secretKeys: map[string]bool{}}
	readme, err := os.ReadFile(filepath.Join(repoRoot, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	p.text = string(readme)
	keyRe := regexp.MustCompile(`--from-literal=([A-Z0-9_]+)=`)
	namedRe := regexp.MustCompile("`([A-Z][A-Z0-9_]+)`")
	for _, c := range p.commands {
		f := strings.Fields(c.line)
		if len(f) == 4 && f[1] == "create" && f[2] == "namespace" {
			p.namespace = f[3]
		}
		if i := slices.Index(f, "generic"); i >= 0 && i+1 < len(f) && slices.Contains(f, "secret") {
			p.secret = f[i+1]
			for _, m := range keyRe.FindAllStringSubmatch(c.line, -1) {
				p.secretKeys[m[1]] = true
			}
			for _, m := range namedRe.FindAllStringSubmatch(c.text, -1) {
				p.secretKeys[m[1]] = true
			}
		}
	}
	if p.namespace == "" || p.secret == "" {
		t.Fatalf("README's Kubernetes section: namespace %q, Secret %q; want both created by its commands", p.namespace, p.secret)
	}
	return p
}

// forOverlay is the sequence of README commands the suite runs for overlay:
// the shared steps, then that overlay's apply commands.
func (p readmePlan) forOverlay(t testing.TB, overlay string) []readmeCommand {
	t.Helper()
	var out []readmeCommand
	dryRun, apply := -1, -1
	for _, c := range p.commands {
		if !c.runs(t) || (c.overlay() != "" && c.overlay() != overlay) {
			continue
		}
		if c.overlay() == overlay {
			switch {
			case strings.Contains(c.line, "--dry-run=server"):
				dryRun = len(out)
			default:
				apply = len(out)
			}
		}
		out = append(out, c)
	}
	if dryRun < 0 || apply < 0 || dryRun > apply {
		t.Fatalf("README: overlay %s needs a `kubectl apply --server-side --dry-run=server -k` step and then a `kubectl apply --server-side -k` step; commands found: %v", overlay, out)
	}
	return out
}

func TestReadmeKubernetesCommandsAreRunOrExplained(t *testing.T) {
	p := loadReadmePlan(t)
	for _, c := range p.commands {
		c.runs(t) // fails on a command in neither list
	}
	for _, overlay := range []string{"dev", "production"} {
		for _, c := range p.forOverlay(t, overlay) {
			t.Logf("%s: step %d: %s", overlay, c.step, c.line)
		}
	}
}

// TestOverlaysOnAPIServer applies each overlay as the README tells an
// operator to, on a real API server, and checks what it stored.
func TestOverlaysOnAPIServer(t *testing.T) {
	if testing.Short() {
		t.Skip("starts etcd and kube-apiserver; skipped with -short")
	}
	plan := loadReadmePlan(t)
	root, err := filepath.Abs(repoRoot)
	if err != nil {
		t.Fatal(err)
	}
	for _, overlay := range []string{"dev", "production"} {
		t.Run(overlay, func(t *testing.T) {
			start := time.Now()
			if err := verifyOverlay(t, plan, root, overlay); err != nil {
				t.Fatal(err)
			}
			t.Logf("applied and checked in %v", time.Since(start).Round(time.Millisecond))
		})
	}
}

// TestOverlaysOnAPIServerRejectMutations runs the same path on mutated
// copies of the manifests: each must fail, for the reason given, so the
// suite is known to check what it claims to.
func TestOverlaysOnAPIServerRejectMutations(t *testing.T) {
	if testing.Short() {
		t.Skip("starts etcd and kube-apiserver; skipped with -short")
	}
	plan := loadReadmePlan(t)
	mutations := []struct {
		name    string
		overlay string
		file    string // under deploy/kubernetes
		old     string // a regular expression that must match once
		new     string
		want    string // in the error
	}{
		{
			name: "unknown field in a Deployment", overlay: "dev", file: "base/worker.yaml",
			old:  `(?m)^(      terminationGracePeriodSeconds: \d+\n)`,
			new:  "${1}      terminationGracePeriod: 45\n",
			want: ".spec.template.spec.terminationGracePeriod: field not declared in schema",
		},
		{
			name: "unknown field in a ScaledObject", overlay: "production", file: "components/keda/scaledobject.yaml",
			old:  `(?m)^(  pollingInterval: \d+\n)`,
			new:  "${1}  pollingIntervall: 30\n",
			want: ".spec.pollingIntervall: field not declared in schema",
		},
		{
			name: "wrong type in a Deployment", overlay: "dev", file: "base/worker.yaml",
			old:  `(?m)^  revisionHistoryLimit: \d+$`,
			new:  "  revisionHistoryLimit: five",
			want: ".spec.revisionHistoryLimit: expected numeric",
		},
		{
			name: "wrong type in a PodMonitor", overlay: "dev", file: "components/monitoring/podmonitor.yaml",
			old:  `(?m)^(\s+)interval: 15s$`,
			new:  "${1}interval: 15",
			want: ".spec.podMetricsEndpoints[0].interval: expected string",
		},
		{
			name: "a deprecated field (an API server warning)", overlay: "dev", file: "base/worker.yaml",
			old:  `(?m)^(      serviceAccountName: \S+\n)`,
			new:  "${1}      nodeSelector:\n        beta.kubernetes.io/os: linux\n",
			want: `the API server warned: Warning: spec.template.spec.nodeSelector[beta.kubernetes.io/os]: deprecated`,
		},
		{
			name: "broken selector in a Deployment", overlay: "dev", file: "base/worker.yaml",
			old:  `(?m)^(  template:\n    metadata:\n      labels:\n(?:        .*\n)*?        app\.kubernetes\.io/component: )worker$`,
			new:  "${1}workers",
			want: "does not match template `labels`",
		},
		{
			name: "broken selector in a PodMonitor", overlay: "production", file: "components/monitoring/podmonitor.yaml",
			old:  `(?m)^(      app\.kubernetes\.io/name: )stargazer-jobs$`,
			new:  "${1}stargazer-job",
			want: "PodMonitor stargazer/stargazer-jobs: selector app.kubernetes.io/name=stargazer-job selects no pod",
		},
		{
			name: "broken selector in a Service", overlay: "dev", file: "base/monitor.yaml",
			old:  `(?m)^(kind: Service\n(?:.*\n)*?spec:\n  selector:\n(?:    .*\n)*?    app\.kubernetes\.io/component: )monitor$`,
			new:  "${1}monitors",
			want: "Service stargazer/stargazer-monitor: selector app.kubernetes.io/component=monitors,app.kubernetes.io/name=stargazer-jobs selects no pod",
		},
		{
			name: "a PodMonitor port the pods do not have", overlay: "dev", file: "components/monitoring/podmonitor.yaml",
			old:  `(?m)^(    - port: )\S+$`,
			new:  "${1}no-such-port",
			want: `port "no-such-port" is not a container port`,
		},
		{
			name: "a component without the overlay's namespace (the bug of issue 25)", overlay: "production", file: "overlays/production/kustomization.yaml",
			old:  `(?m)^namespace: \S+\n`,
			new:  "",
			want: `is in namespace "default", want "stargazer"`,
		},
		{
			name: "a Secret key the README does not document", overlay: "dev", file: "base/worker.yaml",
			old:  `(?m)^(\s+key: )MATRIX_ACCESS_TOKEN$`,
			new:  "${1}MATRIX_TOKEN",
			want: "Secret key MATRIX_TOKEN is not documented",
		},
		{
			name: "a required Secret key the README's Secret lacks", overlay: "dev", file: "base/worker.yaml",
			old:  `(?m)^(\s+key: API_KEY\n)\s+optional: true\n`,
			new:  "${1}",
			want: "required key API_KEY is not in the Secret",
		},
	}
	for _, m := range mutations {
		t.Run(m.name, func(t *testing.T) {
			t.Parallel() // each on its own API server
			root := copyManifests(t)
			file := filepath.Join(root, "deploy", "kubernetes", m.file)
			data, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			re := regexp.MustCompile(m.old)
			if n := len(re.FindAllIndex(data, -1)); n != 1 {
				t.Fatalf("mutation anchor %q matches %d times in %s, want once (update the mutation with the manifest)", m.old, n, m.file)
			}
			if err := os.WriteFile(file, re.ReplaceAll(data, []byte(m.new)), 0o644); err != nil {
				t.Fatal(err)
			}
			err = verifyOverlay(t, plan, root, m.overlay)
			switch {
			case err == nil:
				t.Fatalf("the mutated manifests were accepted; want an error containing %q", m.want)
			case !strings.Contains(err.Error(), m.want):
				t.Fatalf("error does not say %q:\n%v", m.want, err)
			}
			t.Logf("rejected as expected: %.300s", firstLineWith(err.Error(), m.want))
		})
	}
}

func firstLineWith(s, sub string) string {
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			return strings.TrimSpace(l)
		}
	}
	return s
}

// copyManifests copies what the overlays read (deploy/kubernetes and
// deploy/grafana) into a temporary root with the repository's layout.
func copyManifests(t *testing.T) string {
	t.Helper()
	root := t.TempDir()
	for _, dir := range []string{"kubernetes", "grafana"} {
		if err := os.CopyFS(filepath.Join(root, "deploy", dir), os.DirFS(filepath.Join(repoRoot, "deploy", dir))); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

// verifyOverlay starts an API server, installs the CRDs, runs the README's
// commands for overlay in root, and checks what the API server holds. Every
// failure, from a command or a check, comes back in the error.
func verifyOverlay(t *testing.T, plan readmePlan, root, overlay string) error {
	t.Helper()
	srv := kubeapi.Start(t)
	t.Logf("kube-apiserver ready in %v", srv.StartupTime.Round(time.Millisecond))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if err := installCRDs(ctx, t, srv); err != nil {
		return err
	}
	for _, c := range plan.forOverlay(t, overlay) {
		_, stderr, err := srv.Shell(ctx, root, c.line)
		if err != nil {
			return fmt.Errorf("README step %d: %w", c.step, err)
		}
		// The API server's warnings (a deprecated API or field, a
		// duplicate entry it will drop) are failures too.
		for _, l := range strings.Split(string(stderr), "\n") {
			if strings.HasPrefix(l, "Warning:") {
				return fmt.Errorf("README step %d: %s: the API server warned: %s", c.step, c.line, l)
			}
		}
		if strings.Contains(c.line, "--dry-run=server") {
			// A dry run stores nothing.
			out, err := srv.Kubectl(ctx, root, "get", "deployments,daemonsets,configmaps,networkpolicies", "-n", plan.namespace, "-o", "name")
			if err != nil {
				return err
			}
			if len(bytes.TrimSpace(out)) > 0 {
				return fmt.Errorf("README step %d: the dry run stored objects:\n%s", c.step, out)
			}
		}
	}
	out, err := srv.Kubectl(ctx, root, "kustomize", filepath.Join("deploy", "kubernetes", "overlays", overlay))
	if err != nil {
		return err
	}
	rendered, err := decodeObjects(out)
	if err != nil {
		return fmt.Errorf("kubectl kustomize: %w", err)
	}
	c, err := readCluster(ctx, srv, root)
	if err != nil {
		return err
	}
	var f findings
	f.checkNamespaces(c, rendered, plan.namespace)
	c.markOurs(rendered)
	f.checkReferences(c, plan)
	t.Logf("%s: %d objects rendered, %d in the API server, %d pod templates checked", overlay, len(rendered), len(c.objects), len(c.pods))
	return f.err()
}

// installCRDs applies the CRDs vendored in deploy/third_party, once each
// file's sha256 matches its ORIGIN.md, and waits for the API server to
// serve them.
func installCRDs(ctx context.Context, t *testing.T, srv *kubeapi.Server) error {
	t.Helper()
	dir, err := filepath.Abs(filepath.Join(repoRoot, "deploy", "third_party"))
	if err != nil {
		return err
	}
	files, err := thirdPartyCRDs(dir)
	if err != nil {
		return err
	}
	args := []string{"apply", "--server-side"}
	for _, f := range files {
		args = append(args, "-f", f)
	}
	if _, err := srv.Kubectl(ctx, t.TempDir(), args...); err != nil {
		return err
	}
	_, err = srv.Kubectl(ctx, t.TempDir(), "wait", "--for=condition=Established", "--timeout=60s", "crd", "--all")
	return err
}

// thirdPartyCRDs lists the CRD files deploy/third_party/*/ORIGIN.md pin,
// in dir, after checking each one's sha256 and its LICENSE beside it.
func thirdPartyCRDs(dir string) ([]string, error) {
	origins, err := filepath.Glob(filepath.Join(dir, "*", "ORIGIN.md"))
	if err != nil || len(origins) == 0 {
		return nil, fmt.Errorf("no deploy/third_party/*/ORIGIN.md (%v)", err)
	}
	rowRe := regexp.MustCompile("(?m)^\\| `[^`]*/([^`/]+\\.yaml)` \\| `([0-9a-f]{64})` \\|")
	var files []string
	for _, o := range origins {
		project := filepath.Base(filepath.Dir(o))
		text, err := os.ReadFile(o)
		if err != nil {
			return nil, err
		}
		rows := rowRe.FindAllStringSubmatch(string(text), -1)
		if len(rows) == 0 {
			return nil, fmt.Errorf("%s pins no file (rows | `path` | `sha256` |)", o)
		}
		if _, err := os.Stat(filepath.Join(dir, project, "LICENSE")); err != nil {
			return nil, fmt.Errorf("%s: the upstream LICENSE is missing beside the CRDs: %w", project, err)
		}
		for _, r := range rows {
			f := filepath.Join(dir, project, r[1])
			data, err := os.ReadFile(f)
			if err != nil {
				return nil, err
			}
			if sum := sha256.Sum256(data); hex.EncodeToString(sum[:]) != r[2] {
				return nil, fmt.Errorf("%s: sha256 %x, %s pins %s", f, sum, o, r[2])
			}
			files = append(files, f)
		}
	}
	return files, nil
}

// object is the part of any object the checks look at; raw keeps the rest.
type object struct {
	APIVersion string            `json:"apiVersion"`
	Kind       string            `json:"kind"`
	Metadata   metav1.ObjectMeta `json:"metadata"`
	raw        []byte
}

func (o object) ref() string {
	if o.Metadata.Namespace == "" {
		return o.Kind + " " + o.Metadata.Name
	}
	return o.Kind + " " + o.Metadata.Namespace + "/" + o.Metadata.Name
}

// decodeObjects reads a YAML or JSON stream of objects, expanding Lists.
func decodeObjects(data []byte) ([]object, error) {
	var out []object
	d := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(data), 4096)
	for {
		var raw json.RawMessage
		if err := d.Decode(&raw); errors.Is(err, io.EOF) {
			return out, nil
		} else if err != nil {
			return nil, err
		}
		if len(bytes.TrimSpace(raw)) == 0 || string(raw) == "null" {
			continue
		}
		var o object
		if err := json.Unmarshal(raw, &o); err != nil {
			return nil, err
		}
		if strings.HasSuffix(o.Kind, "List") {
			var l struct{ Items []json.RawMessage }
			if err := json.Unmarshal(raw, &l); err != nil {
				return nil, err
			}
			for _, item := range l.Items {
				var o object
				if err := json.Unmarshal(item, &o); err != nil {
					return nil, err
				}
				o.raw = item
				out = append(out, o)
			}
			continue
		}
		o.raw = raw
		out = append(out, o)
	}
}

// podTemplate is the pod a workload would run, or a bare pod.
type podTemplate struct {
	ref       string // "Deployment stargazer/stargazer-worker"
	kind      string
	name      string
	namespace string
	labels    map[string]string
	spec      corev1.PodSpec
	ours      bool // rendered from the overlay, not one of the README's try-out pods
}

// cluster is what the API server holds after the README's commands.
type cluster struct {
	objects    []object
	namespaced map[string]bool              // kind -> namespaced
	namespaces map[string]map[string]string // name -> labels
	pods       []*podTemplate
	secrets    map[string]*corev1.Secret // "ns/name"
	configMaps map[string]*corev1.ConfigMap
	accounts   map[string]bool
	services   []*corev1.Service
	ours       map[string]bool // "Kind ns/name" of the rendered objects
}

// readCluster lists every namespaced object of every listable kind, and the
// namespaces, with kubectl.
func readCluster(ctx context.Context, srv *kubeapi.Server, dir string) (*cluster, error) {
	out, err := srv.Kubectl(ctx, dir, "api-resources", "--verbs=list", "--no-headers")
	if err != nil {
		return nil, err
	}
	c := &cluster{
		namespaced: map[string]bool{},
		namespaces: map[string]map[string]string{},
		secrets:    map[string]*corev1.Secret{},
		configMaps: map[string]*corev1.ConfigMap{},
		accounts:   map[string]bool{},
		ours:       map[string]bool{},
	}
	var resources []string
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		// NAME [SHORTNAMES] APIVERSION NAMESPACED KIND
		f := strings.Fields(line)
		if len(f) < 4 {
			return nil, fmt.Errorf("kubectl api-resources: cannot read %q", line)
		}
		name, gv, namespaced, kind := f[0], f[len(f)-3], f[len(f)-2] == "true", f[len(f)-1]
		c.namespaced[kind] = namespaced
		if !namespaced {
			continue
		}
		if g, _, ok := strings.Cut(gv, "/"); ok {
			name += "." + g
		}
		resources = append(resources, name)
	}
	out, err = srv.Kubectl(ctx, dir, "get", strings.Join(resources, ","), "--all-namespaces", "-o", "json")
	if err != nil {
		return nil, err
	}
	if c.objects, err = decodeObjects(out); err != nil {
		return nil, err
	}
	out, err = srv.Kubectl(ctx, dir, "get", "namespaces", "-o", "json")
	if err != nil {
		return nil, err
	}
	nss, err := decodeObjects(out)
	if err != nil {
		return nil, err
	}
	for _, ns := range nss {
		c.namespaces[ns.Metadata.Name] = ns.Metadata.Labels
	}
	for _, o := range c.objects {
		key := o.Metadata.Namespace + "/" + o.Metadata.Name
		tmpl := func(meta metav1.ObjectMeta, spec corev1.PodSpec) {
			c.pods = append(c.pods, &podTemplate{ref: o.ref(), kind: o.Kind, name: o.Metadata.Name, namespace: o.Metadata.Namespace, labels: meta.Labels, spec: spec})
		}
		var err error
		switch o.Kind {
		case "Deployment":
			var d appsv1.Deployment
			if err = json.Unmarshal(o.raw, &d); err == nil {
				tmpl(d.Spec.Template.ObjectMeta, d.Spec.Template.Spec)
			}
		case "DaemonSet":
			var d appsv1.DaemonSet
			if err = json.Unmarshal(o.raw, &d); err == nil {
				tmpl(d.Spec.Template.ObjectMeta, d.Spec.Template.Spec)
			}
		case "StatefulSet":
			var d appsv1.StatefulSet
			if err = json.Unmarshal(o.raw, &d); err == nil {
				tmpl(d.Spec.Template.ObjectMeta, d.Spec.Template.Spec)
			}
		case "Job":
			var j batchv1.Job
			if err = json.Unmarshal(o.raw, &j); err == nil && len(j.OwnerReferences) == 0 {
				tmpl(j.Spec.Template.ObjectMeta, j.Spec.Template.Spec)
			}
		case "CronJob":
			var j batchv1.CronJob
			if err = json.Unmarshal(o.raw, &j); err == nil {
				tmpl(j.Spec.JobTemplate.Spec.Template.ObjectMeta, j.Spec.JobTemplate.Spec.Template.Spec)
			}
		case "Pod":
			var p corev1.Pod
			if err = json.Unmarshal(o.raw, &p); err == nil && len(p.OwnerReferences) == 0 {
				tmpl(p.ObjectMeta, p.Spec)
			}
		case "Secret":
			var s corev1.Secret
			if err = json.Unmarshal(o.raw, &s); err == nil {
				c.secrets[key] = &s
			}
		case "ConfigMap":
			var m corev1.ConfigMap
			if err = json.Unmarshal(o.raw, &m); err == nil {
				c.configMaps[key] = &m
			}
		case "ServiceAccount":
			c.accounts[key] = true
		case "Service":
			var s corev1.Service
			if err = json.Unmarshal(o.raw, &s); err == nil {
				c.services = append(c.services, &s)
			}
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", o.ref(), err)
		}
	}
	return c, nil
}

// markOurs records which live objects the overlay rendered (by kind and
// name, in whatever namespace they landed).
func (c *cluster) markOurs(rendered []object) {
	names := map[string]bool{}
	for _, r := range rendered {
		names[r.Kind+" "+r.Metadata.Name] = true
	}
	for _, o := range c.objects {
		if names[o.Kind+" "+o.Metadata.Name] {
			c.ours[o.ref()] = true
		}
	}
	for _, p := range c.pods {
		p.ours = c.ours[p.ref]
	}
}

// findings collects what the checks found wrong.
type findings []string

func (f *findings) add(format string, args ...any) { *f = append(*f, fmt.Sprintf(format, args...)) }

func (f findings) err() error {
	if len(f) == 0 {
		return nil
	}
	return errors.New(strings.Join(f, "\n"))
}

// checkNamespaces: every namespaced object the overlay renders names its
// namespace itself (so it does not depend on the operator's kubectl
// context) and is stored there, in the namespace the README creates.
func (f *findings) checkNamespaces(c *cluster, rendered []object, want string) {
	for _, r := range rendered {
		if !c.namespaced[r.Kind] {
			continue
		}
		if r.Metadata.Namespace == "" {
			f.add("%s %s: the overlay gives it no namespace, so it lands in the namespace of the operator's kubectl context", r.Kind, r.Metadata.Name)
		}
		found := false
		for _, o := range c.objects {
			if o.Kind != r.Kind || o.Metadata.Name != r.Metadata.Name {
				continue
			}
			found = true
			if o.Metadata.Namespace != want {
				f.add("%s %s is in namespace %q, want %q (the namespace the README creates)", r.Kind, r.Metadata.Name, o.Metadata.Namespace, want)
			}
		}
		if !found {
			f.add("%s %s: rendered but not in the API server", r.Kind, r.Metadata.Name)
		}
	}
}

// selectorString renders a selector for messages (and for the README's
// mentions of the operator's pods: key=value,...).
func selectorString(s *metav1.LabelSelector) string {
	sel, err := metav1.LabelSelectorAsSelector(s)
	if err != nil {
		return fmt.Sprintf("invalid(%v)", err)
	}
	return sel.String()
}

// matches reports whether a label selector selects the labels l. A nil
// selector selects nothing (as for a PodDisruptionBudget); an empty one
// everything.
func matches(s *metav1.LabelSelector, l map[string]string) bool {
	if s == nil {
		return false
	}
	sel, err := metav1.LabelSelectorAsSelector(s)
	return err == nil && sel.Matches(labels.Set(l))
}

// selected are the pod templates in the namespaces nsOK accepts that s selects.
func (c *cluster) selected(s *metav1.LabelSelector, nsOK func(ns string) bool) []*podTemplate {
	var out []*podTemplate
	for _, p := range c.pods {
		if nsOK(p.namespace) && matches(s, p.labels) {
			out = append(out, p)
		}
	}
	return out
}

func inNamespace(ns string) func(string) bool { return func(n string) bool { return n == ns } }

// containerPort resolves a port by name or number on a pod's containers.
func containerPort(spec corev1.PodSpec, p intstr.IntOrString) (int32, bool) {
	for _, ct := range slices.Concat(spec.InitContainers, spec.Containers) {
		for _, cp := range ct.Ports {
			if (p.Type == intstr.String && cp.Name == p.StrVal) || (p.Type == intstr.Int && cp.ContainerPort == p.IntVal) {
				return cp.ContainerPort, true
			}
		}
	}
	return 0, false
}

// crd is the part of KEDA's and the Prometheus Operator's objects the
// reference checks read.
type crd struct {
	Spec struct {
		// ScaledObject
		ScaleTargetRef *struct {
			APIVersion string `json:"apiVersion"`
			Kind       string `json:"kind"`
			Name       string `json:"name"`
		} `json:"scaleTargetRef"`
		// PodMonitor, ServiceMonitor
		Selector          *metav1.LabelSelector `json:"selector"`
		NamespaceSelector *struct {
			Any        bool     `json:"any"`
			MatchNames []string `json:"matchNames"`
		} `json:"namespaceSelector"`
		PodMetricsEndpoints []struct {
			Port       *string             `json:"port"`
			PortNumber *int32              `json:"portNumber"`
			TargetPort *intstr.IntOrString `json:"targetPort"`
		} `json:"podMetricsEndpoints"`
		Endpoints []struct {
			Port string `json:"port"`
		} `json:"endpoints"`
	} `json:"spec"`
}

func (d crd) namespaces(own string) func(string) bool {
	switch ns := d.Spec.NamespaceSelector; {
	case ns == nil || (!ns.Any && len(ns.MatchNames) == 0):
		return inNamespace(own)
	case ns.Any:
		return func(string) bool { return true }
	default:
		return func(n string) bool { return slices.Contains(ns.MatchNames, n) }
	}
}

// prometheusPeer is where the README's Prometheus runs (step 2 installs it
// in the namespace monitoring; the operator labels its pods so).
var prometheusPeer = struct {
	namespace string
	labels    map[string]string
}{"monitoring", map[string]string{"app.kubernetes.io/name": "prometheus"}}

// checkReferences: everything our objects point at resolves in the API
// server, or is documented in the README as the operator's.
func (f *findings) checkReferences(c *cluster, plan readmePlan) {
	for _, o := range c.objects {
		if !c.ours[o.ref()] {
			continue
		}
		switch o.Kind {
		case "ScaledObject", "HorizontalPodAutoscaler":
			f.checkScaleTarget(c, o)
		case "Service":
			f.checkService(c, o)
		case "PodDisruptionBudget":
			var pdb policyv1.PodDisruptionBudget
			if err := json.Unmarshal(o.raw, &pdb); err != nil {
				f.add("%s: %v", o.ref(), err)
				continue
			}
			if len(c.selected(pdb.Spec.Selector, inNamespace(pdb.Namespace))) == 0 {
				f.add("%s: selector %s selects no pod", o.ref(), selectorString(pdb.Spec.Selector))
			}
		case "PodMonitor":
			f.checkPodMonitor(c, o)
		case "ServiceMonitor":
			f.checkServiceMonitor(c, o)
		case "NetworkPolicy":
			f.checkNetworkPolicy(c, o, plan)
		case "Ingress":
			f.checkIngress(c, o, plan)
		}
	}
	f.checkPodReferences(c, plan)
}

func (f *findings) checkScaleTarget(c *cluster, o object) {
	var d crd
	if err := json.Unmarshal(o.raw, &d); err != nil || d.Spec.ScaleTargetRef == nil {
		f.add("%s: no scaleTargetRef (%v)", o.ref(), err)
		return
	}
	ref := d.Spec.ScaleTargetRef
	kind := cmpOr(ref.Kind, "Deployment")
	for _, p := range c.pods {
		if p.kind == kind && p.name == ref.Name && p.namespace == o.Metadata.Namespace {
			return
		}
	}
	f.add("%s: scaleTargetRef %s %s/%s does not exist", o.ref(), kind, o.Metadata.Namespace, ref.Name)
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

func (f *findings) checkService(c *cluster, o object) {
	var s corev1.Service
	if err := json.Unmarshal(o.raw, &s); err != nil {
		f.add("%s: %v", o.ref(), err)
		return
	}
	if len(s.Spec.Selector) == 0 {
		return // endpoints managed by hand
	}
	sel := metav1.SetAsLabelSelector(s.Spec.Selector)
	pods := c.selected(sel, inNamespace(s.Namespace))
	if len(pods) == 0 {
		f.add("%s: selector %s selects no pod", o.ref(), selectorString(sel))
	}
	for _, port := range s.Spec.Ports {
		target := port.TargetPort
		if target.Type == intstr.Int && target.IntVal == 0 {
			target = intstr.FromInt32(port.Port)
		}
		for _, p := range pods {
			if _, ok := containerPort(p.spec, target); !ok {
				f.add("%s: port %s targets %s, which is not a container port of %s", o.ref(), port.Name, target.String(), p.ref)
			}
		}
	}
}

func (f *findings) checkPodMonitor(c *cluster, o object) {
	var d crd
	if err := json.Unmarshal(o.raw, &d); err != nil {
		f.add("%s: %v", o.ref(), err)
		return
	}
	pods := c.selected(d.Spec.Selector, d.namespaces(o.Metadata.Namespace))
	if len(pods) == 0 {
		f.add("%s: selector %s selects no pod", o.ref(), selectorString(d.Spec.Selector))
	}
	for _, ep := range d.Spec.PodMetricsEndpoints {
		var port intstr.IntOrString
		switch {
		case ep.Port != nil:
			port = intstr.FromString(*ep.Port)
		case ep.PortNumber != nil:
			port = intstr.FromInt32(*ep.PortNumber)
		case ep.TargetPort != nil:
			port = *ep.TargetPort
		default:
			f.add("%s: an endpoint names no port", o.ref())
			continue
		}
		for _, p := range pods {
			n, ok := containerPort(p.spec, port)
			if !ok {
				f.add("%s: port %q is not a container port of %s", o.ref(), port.String(), p.ref)
				continue
			}
			// Prometheus must be let in on that port.
			if !c.ingressAllowed(p, prometheusPeer.namespace, prometheusPeer.labels, n) {
				f.add("%s: no NetworkPolicy lets Prometheus (pods labelled %s) reach %s on port %d", o.ref(), labels.Set(prometheusPeer.labels), p.ref, n)
			}
		}
	}
}

func (f *findings) checkServiceMonitor(c *cluster, o object) {
	var d crd
	if err := json.Unmarshal(o.raw, &d); err != nil {
		f.add("%s: %v", o.ref(), err)
		return
	}
	nsOK := d.namespaces(o.Metadata.Namespace)
	var svcs []*corev1.Service
	for _, s := range c.services {
		if nsOK(s.Namespace) && matches(d.Spec.Selector, s.Labels) {
			svcs = append(svcs, s)
		}
	}
	if len(svcs) == 0 {
		f.add("%s: selector %s selects no Service", o.ref(), selectorString(d.Spec.Selector))
	}
	for _, ep := range d.Spec.Endpoints {
		for _, s := range svcs {
			if !slices.ContainsFunc(s.Spec.Ports, func(p corev1.ServicePort) bool { return p.Name == ep.Port }) {
				f.add("%s: port %q is not a port of Service %s/%s", o.ref(), ep.Port, s.Namespace, s.Name)
			}
		}
	}
}

// policyPeers: the pods a NetworkPolicy peer selects here, or nil.
func (c *cluster) peerPods(policyNS string, peer networkingv1.NetworkPolicyPeer) []*podTemplate {
	nsOK := inNamespace(policyNS)
	if peer.NamespaceSelector != nil {
		nsOK = func(n string) bool { return matches(peer.NamespaceSelector, c.namespaces[n]) }
	}
	podSel := peer.PodSelector
	if podSel == nil {
		podSel = &metav1.LabelSelector{}
	}
	return c.selected(podSel, nsOK)
}

// peerAdmits reports whether peer takes in a pod with podLabels in a
// namespace with nsLabels.
func peerAdmits(policyNS string, peer networkingv1.NetworkPolicyPeer, ns string, nsLabels, podLabels map[string]string) bool {
	if peer.IPBlock != nil {
		return false
	}
	if peer.NamespaceSelector == nil {
		if ns != policyNS {
			return false
		}
	} else if !matches(peer.NamespaceSelector, nsLabels) {
		return false
	}
	return peer.PodSelector == nil || matches(peer.PodSelector, podLabels)
}

// portAllowed reports whether a rule's ports take in port n of pod p.
func portAllowed(ports []networkingv1.NetworkPolicyPort, p *podTemplate, n int32) bool {
	if len(ports) == 0 {
		return true
	}
	for _, pp := range ports {
		if pp.Protocol != nil && *pp.Protocol != corev1.ProtocolTCP {
			continue
		}
		if pp.Port == nil {
			return true
		}
		want, ok := containerPort(p.spec, *pp.Port)
		if pp.Port.Type == intstr.Int {
			want, ok = pp.Port.IntVal, true
		}
		if ok && (want == n || (pp.EndPort != nil && want <= n && n <= *pp.EndPort)) {
			return true
		}
	}
	return false
}

// ingressAllowed reports whether the NetworkPolicies in p's namespace let a
// pod with podLabels in namespace ns reach p on TCP port n.
func (c *cluster) ingressAllowed(p *podTemplate, ns string, podLabels map[string]string, n int32) bool {
	nsLabels := map[string]string{"kubernetes.io/metadata.name": ns}
	isolated := false
	for _, o := range c.objects {
		if o.Kind != "NetworkPolicy" || o.Metadata.Namespace != p.namespace {
			continue
		}
		var np networkingv1.NetworkPolicy
		if json.Unmarshal(o.raw, &np) != nil || !matches(&np.Spec.PodSelector, p.labels) {
			continue
		}
		if len(np.Spec.PolicyTypes) > 0 && !slices.Contains(np.Spec.PolicyTypes, networkingv1.PolicyTypeIngress) {
			continue
		}
		isolated = true
		for _, rule := range np.Spec.Ingress {
			from := len(rule.From) == 0 || slices.ContainsFunc(rule.From, func(peer networkingv1.NetworkPolicyPeer) bool {
				return peerAdmits(np.Namespace, peer, ns, nsLabels, podLabels)
			})
			if from && portAllowed(rule.Ports, p, n) {
				return true
			}
		}
	}
	return !isolated
}

func (f *findings) checkNetworkPolicy(c *cluster, o object, plan readmePlan) {
	var np networkingv1.NetworkPolicy
	if err := json.Unmarshal(o.raw, &np); err != nil {
		f.add("%s: %v", o.ref(), err)
		return
	}
	var mine []*podTemplate
	for _, p := range c.selected(&np.Spec.PodSelector, inNamespace(np.Namespace)) {
		if p.ours {
			mine = append(mine, p)
		}
	}
	if len(mine) == 0 {
		f.add("%s: podSelector %s selects none of the overlay's pods", o.ref(), selectorString(&np.Spec.PodSelector))
	}
	// Ingress ports: something the selected pods listen on.
	for _, rule := range np.Spec.Ingress {
		for _, pp := range rule.Ports {
			if pp.Port == nil {
				continue
			}
			if !slices.ContainsFunc(mine, func(p *podTemplate) bool { _, ok := containerPort(p.spec, *pp.Port); return ok }) {
				f.add("%s: lets in port %s, which none of the pods it selects listens on", o.ref(), pp.Port.String())
			}
		}
		for _, peer := range rule.From {
			f.checkPeer(c, o, np.Namespace, peer, nil, plan)
		}
	}
	for _, rule := range np.Spec.Egress {
		for _, peer := range rule.To {
			f.checkPeer(c, o, np.Namespace, peer, rule.Ports, plan)
		}
	}
}

// checkPeer: a pod peer selects pods here (the README's try-out Redis and
// FalkorDB, or our own), reachable on one of the rule's ports; or it is a
// pod the operator runs, which the README names by its labels.
func (f *findings) checkPeer(c *cluster, o object, ns string, peer networkingv1.NetworkPolicyPeer, ports []networkingv1.NetworkPolicyPort, plan readmePlan) {
	if peer.IPBlock != nil {
		return
	}
	pods := c.peerPods(ns, peer)
	if len(pods) == 0 {
		sel := "any pod"
		if peer.PodSelector != nil {
			sel = selectorString(peer.PodSelector)
		}
		if !strings.Contains(plan.text, "`"+sel+"`") {
			f.add("%s: peer %s selects no pod here, and the README does not name `%s` as the operator's", o.ref(), sel, sel)
		}
		return
	}
	if len(ports) == 0 {
		return
	}
	for _, p := range pods {
		for _, ct := range slices.Concat(p.spec.InitContainers, p.spec.Containers) {
			for _, cp := range ct.Ports {
				if portAllowed(ports, p, cp.ContainerPort) {
					return
				}
			}
		}
	}
	f.add("%s: egress to %s allows none of the ports its pods listen on", o.ref(), selectorString(peer.PodSelector))
}

func (f *findings) checkIngress(c *cluster, o object, plan readmePlan) {
	var ing networkingv1.Ingress
	if err := json.Unmarshal(o.raw, &ing); err != nil {
		f.add("%s: %v", o.ref(), err)
		return
	}
	for _, tls := range ing.Spec.TLS {
		if tls.SecretName == "" || c.secrets[ing.Namespace+"/"+tls.SecretName] != nil {
			continue
		}
		if !strings.Contains(plan.text, "`"+tls.SecretName+"`") {
			f.add("%s: TLS Secret %s does not exist and the README does not name it as the operator's", o.ref(), tls.SecretName)
		}
	}
	var backends []*networkingv1.IngressServiceBackend
	if b := ing.Spec.DefaultBackend; b != nil && b.Service != nil {
		backends = append(backends, b.Service)
	}
	for _, r := range ing.Spec.Rules {
		if r.HTTP == nil {
			continue
		}
		for _, p := range r.HTTP.Paths {
			if p.Backend.Service != nil {
				backends = append(backends, p.Backend.Service)
			}
		}
	}
	for _, b := range backends {
		i := slices.IndexFunc(c.services, func(s *corev1.Service) bool { return s.Namespace == ing.Namespace && s.Name == b.Name })
		if i < 0 {
			f.add("%s: backend Service %s does not exist", o.ref(), b.Name)
			continue
		}
		if !slices.ContainsFunc(c.services[i].Spec.Ports, func(p corev1.ServicePort) bool {
			return (b.Port.Name != "" && p.Name == b.Port.Name) || (b.Port.Number != 0 && p.Port == b.Port.Number)
		}) {
			f.add("%s: backend Service %s has no port %q/%d", o.ref(), b.Name, b.Port.Name, b.Port.Number)
		}
	}
}

// checkPodReferences: the ServiceAccount, ConfigMaps and Secrets our pod
// templates name exist in their namespace; every Secret key is one the
// README documents, every required one is in the Secret the README creates,
// and every documented key is read by some pod.
func (f *findings) checkPodReferences(c *cluster, plan readmePlan) {
	read := map[string]bool{}
	for _, p := range c.pods {
		if !p.ours {
			continue
		}
		key := func(name string) string { return p.namespace + "/" + name }
		if sa := p.spec.ServiceAccountName; sa != "" && sa != "default" && !c.accounts[key(sa)] {
			f.add("%s: ServiceAccount %s does not exist", p.ref, sa)
		}
		configMap := func(name string, optional *bool, k string) {
			m := c.configMaps[key(name)]
			switch {
			case m == nil && (optional == nil || !*optional):
				f.add("%s: ConfigMap %s does not exist", p.ref, name)
			case m != nil && k != "":
				if _, ok := m.Data[k]; !ok && (optional == nil || !*optional) {
					f.add("%s: ConfigMap %s has no key %s", p.ref, name, k)
				}
			}
		}
		secret := func(name string, optional *bool, k string) {
			opt := optional != nil && *optional
			s := c.secrets[key(name)]
			if name == plan.secret && k != "" {
				read[k] = true
				if !plan.secretKeys[k] {
					f.add("%s: Secret key %s is not documented in the README's Secret step", p.ref, k)
				}
			}
			switch {
			case s == nil && !opt:
				f.add("%s: Secret %s does not exist (the README creates %s)", p.ref, name, plan.secret)
			case s != nil && k != "" && !opt:
				if _, ok := s.Data[k]; !ok {
					f.add("%s: required key %s is not in the Secret %s the README creates", p.ref, k, name)
				}
			}
		}
		for _, ct := range slices.Concat(p.spec.InitContainers, p.spec.Containers) {
			for _, ef := range ct.EnvFrom {
				if r := ef.ConfigMapRef; r != nil {
					configMap(r.Name, r.Optional, "")
				}
				if r := ef.SecretRef; r != nil {
					secret(r.Name, r.Optional, "")
				}
			}
			for _, e := range ct.Env {
				if e.ValueFrom == nil {
					continue
				}
				if r := e.ValueFrom.ConfigMapKeyRef; r != nil {
					configMap(r.Name, r.Optional, r.Key)
				}
				if r := e.ValueFrom.SecretKeyRef; r != nil {
					secret(r.Name, r.Optional, r.Key)
				}
			}
		}
		for _, v := range p.spec.Volumes {
			if v.ConfigMap != nil {
				configMap(v.ConfigMap.Name, v.ConfigMap.Optional, "")
			}
			if v.Secret != nil {
				secret(v.Secret.SecretName, v.Secret.Optional, "")
			}
			if v.Projected != nil {
				for _, src := range v.Projected.Sources {
					if src.ConfigMap != nil {
						configMap(src.ConfigMap.Name, src.ConfigMap.Optional, "")
					}
					if src.Secret != nil {
						secret(src.Secret.Name, src.Secret.Optional, "")
					}
				}
			}
		}
		for _, ps := range p.spec.ImagePullSecrets {
			secret(ps.Name, nil, "")
		}
	}
	for k := range plan.secretKeys {
		if !read[k] {
			f.add("the README documents Secret key %s, which no pod reads", k)
		}
	}
}
