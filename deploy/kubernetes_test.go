package deploy_test

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	sigsjson "sigs.k8s.io/json"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"

	"github.com/stargazer/stargazer-jobs/internal/config"
)

// The kustomizations a user applies: the base alone and each overlay.
var kustomizations = []string{"base", "overlays/dev", "overlays/production"}

// The ports of every stargazer-jobs process: HTTP_ADDR (the dashboard and
// the API on the monitor; the open endpoints too, for compatibility) and
// PROBE_ADDR, the probe listener (/healthz, /readyz and /metrics alone, on
// a connection budget of their own), which the probes and Prometheus use.
const (
	monitorPort = 8080
	probePort   = 8081
)

// secretName is the Secret the manifests reference; the README's
// "Deploy on Kubernetes" creates it. The manifests never contain it.
const secretName = "stargazer"

// rendered is one kustomization built by the kustomize library, every
// object decoded strictly into its API type.
type rendered struct {
	name         string
	deployments  map[string]*appsv1.Deployment
	daemonSets   map[string]*appsv1.DaemonSet
	services     map[string]*corev1.Service
	configMaps   map[string]*corev1.ConfigMap
	pdbs         []*policyv1.PodDisruptionBudget
	netpols      map[string]*networkingv1.NetworkPolicy
	ingresses    []*networkingv1.Ingress
	podMonitors  []*podMonitor
	scaledObjs   []*scaledObject
	promRules    []*prometheusRule
	serviceAccts []*corev1.ServiceAccount
}

// podMonitor is the subset of the Prometheus Operator's PodMonitor
// (monitoring.coreos.com/v1) used here. The CRD kinds are decoded into
// small local structs rather than the operator's and KEDA's Go modules
// (whose dependency graphs are large); strict decoding still rejects any
// field these structs do not know, so a misspelt field fails the test.
type podMonitor struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Metadata   struct {
		Name      string            `json:"name"`
		Namespace string            `json:"namespace"`
		Labels    map[string]string `json:"labels,omitempty"`
	} `json:"metadata"`
	Spec struct {
		Selector struct {
			MatchLabels map[string]string `json:"matchLabels"`
		} `json:"selector"`
		PodMetricsEndpoints []struct {
			Port        string `json:"port"`
			Path        string `json:"path"`
			Interval    string `json:"interval"`
			Relabelings []struct {
				SourceLabels []string `json:"sourceLabels"`
				TargetLabel  string   `json:"targetLabel"`
				Replacement  string   `json:"replacement"`
			} `json:"relabelings"`
		} `json:"podMetricsEndpoints"`
	} `json:"spec"`
}

// scaledObject is the subset of KEDA's ScaledObject (keda.sh/v1alpha1)
// used here.
type scaledObject struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Metadata   struct {
		Name      string            `json:"name"`
		Namespace string            `json:"namespace"`
		Labels    map[string]string `json:"labels,omitempty"`
	} `json:"metadata"`
	Spec struct {
		ScaleTargetRef struct {
			Name string `json:"name"`
		} `json:"scaleTargetRef"`
		MinReplicaCount *int32 `json:"minReplicaCount"`
		MaxReplicaCount *int32 `json:"maxReplicaCount"`
		PollingInterval int32  `json:"pollingInterval"`
		CooldownPeriod  int32  `json:"cooldownPeriod"`
		Advanced        *struct {
			HorizontalPodAutoscalerConfig struct {
				Behavior map[string]any `json:"behavior"`
			} `json:"horizontalPodAutoscalerConfig"`
		} `json:"advanced"`
		Triggers []struct {
			Type     string            `json:"type"`
			Metadata map[string]string `json:"metadata"`
		} `json:"triggers"`
	} `json:"spec"`
}

// strict decodes JSON into v, failing on unknown and duplicate fields and
// on fields whose case does not match, as the API server's strict field
// validation does.
func strict(data []byte, v any) error {
	strictErrs, err := sigsjson.UnmarshalStrict(data, v)
	if err != nil {
		return err
	}
	return errors.Join(strictErrs...)
}

func render(t *testing.T, dir string) *rendered {
	t.Helper()
	k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	resMap, err := k.Run(filesys.MakeFsOnDisk(), filepath.Join(repoRoot, "deploy", "kubernetes", dir))
	if err != nil {
		t.Fatalf("kustomize build %s: %v", dir, err)
	}
	r := &rendered{
		name: dir, deployments: map[string]*appsv1.Deployment{}, daemonSets: map[string]*appsv1.DaemonSet{},
		services: map[string]*corev1.Service{}, configMaps: map[string]*corev1.ConfigMap{}, netpols: map[string]*networkingv1.NetworkPolicy{},
	}
	for _, res := range resMap.Resources() {
		data, err := res.MarshalJSON()
		if err != nil {
			t.Fatal(err)
		}
		kind, name := res.GetKind(), res.GetName()
		var obj any
		switch kind {
		case "Deployment":
			d := &appsv1.Deployment{}
			obj, r.deployments[name] = d, d
		case "DaemonSet":
			d := &appsv1.DaemonSet{}
			obj, r.daemonSets[name] = d, d
		case "Service":
			s := &corev1.Service{}
			obj, r.services[name] = s, s
		case "ConfigMap":
			c := &corev1.ConfigMap{}
			obj, r.configMaps[name] = c, c
		case "ServiceAccount":
			s := &corev1.ServiceAccount{}
			obj, r.serviceAccts = s, append(r.serviceAccts, s)
		case "PodDisruptionBudget":
			p := &policyv1.PodDisruptionBudget{}
			obj, r.pdbs = p, append(r.pdbs, p)
		case "NetworkPolicy":
			n := &networkingv1.NetworkPolicy{}
			obj, r.netpols[name] = n, n
		case "Ingress":
			i := &networkingv1.Ingress{}
			obj, r.ingresses = i, append(r.ingresses, i)
		case "PodMonitor":
			p := &podMonitor{}
			obj, r.podMonitors = p, append(r.podMonitors, p)
		case "ScaledObject":
			s := &scaledObject{}
			obj, r.scaledObjs = s, append(r.scaledObjs, s)
		case "PrometheusRule":
			p := &prometheusRule{}
			obj, r.promRules = p, append(r.promRules, p)
		case "Secret":
			t.Fatalf("%s: Secret %s is inlined in the manifests; reference it instead", dir, name)
		default:
			t.Fatalf("%s: unexpected kind %s (%s): decode it strictly here first", dir, kind, name)
		}
		if err := strict(data, obj); err != nil {
			t.Errorf("%s: %s %s does not decode strictly: %v", dir, kind, name, err)
		}
	}
	return r
}

func renderAll(t *testing.T) []*rendered {
	t.Helper()
	var out []*rendered
	for _, k := range kustomizations {
		out = append(out, render(t, k))
	}
	return out
}

// workload is a pod template with the name of the object that holds it.
type workload struct {
	kind, name string
	labels     map[string]string
	pod        corev1.PodSpec
}

func (r *rendered) workloads() []workload {
	var out []workload
	for name, d := range r.deployments {
		out = append(out, workload{"Deployment", name, d.Spec.Template.Labels, d.Spec.Template.Spec})
	}
	for name, d := range r.daemonSets {
		out = append(out, workload{"DaemonSet", name, d.Spec.Template.Labels, d.Spec.Template.Spec})
	}
	slices.SortFunc(out, func(a, b workload) int { return strings.Compare(a.name, b.name) })
	return out
}

func (r *rendered) deployment(t *testing.T, name string) *appsv1.Deployment {
	t.Helper()
	d, ok := r.deployments[name]
	if !ok {
		t.Fatalf("%s: no Deployment %s", r.name, name)
	}
	return d
}

// env is a container's environment as the kubelet builds it: envFrom
// ConfigMaps first, then env, which wins. Values from a Secret or the
// downward API are given as "<secret:KEY>" and "<field:PATH>".
func (r *rendered) env(t *testing.T, c corev1.Container) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, from := range c.EnvFrom {
		if from.ConfigMapRef == nil {
			t.Errorf("%s: envFrom other than a ConfigMap: %+v", c.Name, from)
			continue
		}
		cm, ok := r.configMaps[from.ConfigMapRef.Name]
		if !ok {
			t.Errorf("%s: envFrom ConfigMap %s is not in the manifests", c.Name, from.ConfigMapRef.Name)
			continue
		}
		for k, v := range cm.Data {
			out[from.Prefix+k] = v
		}
	}
	for _, e := range c.Env {
		switch {
		case e.ValueFrom == nil:
			out[e.Name] = e.Value
		case e.ValueFrom.SecretKeyRef != nil:
			out[e.Name] = "<secret:" + e.ValueFrom.SecretKeyRef.Key + ">"
		case e.ValueFrom.FieldRef != nil:
			out[e.Name] = "<field:" + e.ValueFrom.FieldRef.FieldPath + ">"
		default:
			t.Errorf("%s: %s comes from neither a value, a Secret nor a field", c.Name, e.Name)
		}
	}
	return out
}

func settingsByEnv() map[string]config.Setting {
	out := map[string]config.Setting{}
	for _, s := range config.Settings() {
		out[s.Env] = s
	}
	return out
}

// portNumber resolves a probe's port (a number or a container port's name).
func portNumber(c corev1.Container, p intstr.IntOrString) int32 {
	if p.Type == intstr.Int {
		return p.IntVal
	}
	for _, cp := range c.Ports {
		if cp.Name == p.StrVal {
			return cp.ContainerPort
		}
	}
	return 0
}

func TestManifestsRenderAndDecodeStrictly(t *testing.T) {
	for _, r := range renderAll(t) {
		t.Run(r.name, func(t *testing.T) {
			if len(r.deployments) != 2 || len(r.daemonSets) != 1 {
				t.Errorf("%d Deployments and %d DaemonSets, want the worker and monitor Deployments and the node DaemonSet",
					len(r.deployments), len(r.daemonSets))
			}
			for _, w := range r.workloads() {
				if w.pod.ServiceAccountName == "" || w.pod.AutomountServiceAccountToken == nil || *w.pod.AutomountServiceAccountToken {
					t.Errorf("%s: needs its service account with no API token mounted", w.name)
				}
			}
		})
	}
}

func TestWorkerDeployment(t *testing.T) {
	for _, r := range renderAll(t) {
		t.Run(r.name, func(t *testing.T) {
			d := r.deployment(t, "stargazer-worker")
			replicas := d.Spec.Replicas
			if len(r.scaledObjs) > 0 {
				// KEDA owns the count: the Deployment must not reset it.
				if replicas != nil {
					t.Errorf("replicas = %d with a ScaledObject: re-applying would reset a scaled-out fleet", *replicas)
				}
				replicas = r.scaledObjs[0].Spec.MinReplicaCount
			}
			if replicas == nil || *replicas != 3 {
				t.Errorf("worker replicas (or the ScaledObject's minimum) = %v, want 3", replicas)
			}
			if !labels.SelectorFromSet(d.Spec.Selector.MatchLabels).Matches(labels.Set(d.Spec.Template.Labels)) {
				t.Error("the selector does not select the pod template")
			}
			c := d.Spec.Template.Spec.Containers[0]
			env := r.env(t, c)
			if env["ROLE"] != config.RoleWorker {
				t.Errorf("ROLE = %q", env["ROLE"])
			}
			if got := env["DEPLOYMENT_ID"]; got != "<field:metadata.labels['pod-template-hash']>" {
				t.Errorf("DEPLOYMENT_ID = %q, want the pod-template-hash label through the downward API", got)
			}
			if !strings.HasPrefix(c.Image, "stargazer-jobs/worker") && !strings.Contains(c.Image, "/stargazer-jobs/worker") {
				t.Errorf("image %s, want the worker image", c.Image)
			}
		})
	}
}

// TestProbesAndGracePeriods checks every stargazer-jobs container: liveness
// on /healthz and readiness on /readyz on the probe port (which clients of
// the monitor port cannot starve), within a timeout, and a grace period
// that outlasts SHUTDOWN_TIMEOUT plus any preStop pause.
func TestProbesAndGracePeriods(t *testing.T) {
	for _, r := range renderAll(t) {
		for _, w := range r.workloads() {
			t.Run(r.name+"/"+w.name, func(t *testing.T) {
				for _, c := range w.pod.Containers {
					for _, p := range []struct {
						name  string
						probe *corev1.Probe
						path  string
					}{{"liveness", c.LivenessProbe, "/healthz"}, {"readiness", c.ReadinessProbe, "/readyz"}} {
						if p.probe == nil || p.probe.HTTPGet == nil {
							t.Errorf("%s: no HTTP %s probe", c.Name, p.name)
							continue
						}
						if p.probe.HTTPGet.Path != p.path || portNumber(c, p.probe.HTTPGet.Port) != probePort {
							t.Errorf("%s: %s probe on %s port %v, want %s on %d", c.Name, p.name, p.probe.HTTPGet.Path, p.probe.HTTPGet.Port.String(), p.path, probePort)
						}
						// monitor's TestProbesAnswerWithinTheProbeTimeout...
						// holds the probe listener to the strictest of these.
						if p.probe.TimeoutSeconds < 1 || p.probe.TimeoutSeconds > 10 {
							t.Errorf("%s: %s probe timeoutSeconds %d, want 1-10", c.Name, p.name, p.probe.TimeoutSeconds)
						}
					}
					env := r.env(t, c)
					if env["HTTP_ADDR"] != fmt.Sprintf("0.0.0.0:%d", monitorPort) {
						t.Errorf("%s: HTTP_ADDR = %q: the Service and port-forward could not reach it", c.Name, env["HTTP_ADDR"])
					}
					if env["PROBE_ADDR"] != fmt.Sprintf("0.0.0.0:%d", probePort) {
						t.Errorf("%s: PROBE_ADDR = %q: the probes and Prometheus could not reach it", c.Name, env["PROBE_ADDR"])
					}
					if !slices.ContainsFunc(c.Ports, func(p corev1.ContainerPort) bool { return p.Name == "probes" && p.ContainerPort == probePort }) {
						t.Errorf("%s: no container port named probes (%d)", c.Name, probePort)
					}
					// The HTTP server binds beyond loopback only with credentials.
					if !strings.HasPrefix(env["MONITOR_TOKEN"], "<secret:") {
						t.Errorf("%s: no MONITOR_TOKEN from the Secret: the server would bind to loopback only", c.Name)
					}
					shutdown := 30 * time.Second // config default
					if raw, ok := env["SHUTDOWN_TIMEOUT"]; ok {
						d, err := time.ParseDuration(raw)
						if err != nil {
							t.Fatalf("%s: SHUTDOWN_TIMEOUT %q: %v", c.Name, raw, err)
						}
						shutdown = d
					}
					var preStop time.Duration
					if c.Lifecycle != nil && c.Lifecycle.PreStop != nil {
						if s := c.Lifecycle.PreStop.Sleep; s != nil {
							preStop = time.Duration(s.Seconds) * time.Second
						} else {
							t.Errorf("%s: a preStop hook other than sleep (the images have no shell)", c.Name)
						}
					}
					if w.pod.TerminationGracePeriodSeconds == nil {
						t.Fatalf("%s: no terminationGracePeriodSeconds", w.name)
					}
					grace := time.Duration(*w.pod.TerminationGracePeriodSeconds) * time.Second
					need := preStop + 5*time.Second + 2*time.Second // the HTTP server's graceful stop, then the probe listener's
					if env["ROLE"] != config.RoleMonitor {
						need += shutdown // in-flight tasks
					}
					if grace <= need {
						t.Errorf("%s: terminationGracePeriodSeconds %v is not above preStop %v + SHUTDOWN_TIMEOUT %v (role %s) + 5 s",
							w.name, grace, preStop, shutdown, env["ROLE"])
					}
				}
			})
		}
	}
}

func TestMonitorDeploymentServiceAndIngress(t *testing.T) {
	for _, r := range renderAll(t) {
		t.Run(r.name, func(t *testing.T) {
			d := r.deployment(t, "stargazer-monitor")
			c := d.Spec.Template.Spec.Containers[0]
			env := r.env(t, c)
			if env["ROLE"] != config.RoleMonitor || env["QUEUE_METRICS"] != "true" {
				t.Errorf("monitor ROLE=%q QUEUE_METRICS=%q, want monitor and true (it exports the queue metrics)", env["ROLE"], env["QUEUE_METRICS"])
			}
			// It sits behind a Service: give the endpoint removal time.
			if c.Lifecycle == nil || c.Lifecycle.PreStop == nil || c.Lifecycle.PreStop.Sleep == nil || c.Lifecycle.PreStop.Sleep.Seconds < 3 {
				t.Error("monitor: no preStop sleep before the HTTP server stops")
			}
			svc, ok := r.services["stargazer-monitor"]
			if !ok {
				t.Fatal("no Service stargazer-monitor")
			}
			if !labels.SelectorFromSet(svc.Spec.Selector).Matches(labels.Set(d.Spec.Template.Labels)) {
				t.Error("the Service does not select the monitor pods")
			}
			for name, other := range r.deployments {
				if name != d.Name && labels.SelectorFromSet(svc.Spec.Selector).Matches(labels.Set(other.Spec.Template.Labels)) {
					t.Errorf("the Service also selects %s", name)
				}
			}
			if len(svc.Spec.Ports) != 1 || portNumber(c, svc.Spec.Ports[0].TargetPort) != monitorPort {
				t.Errorf("Service ports %+v, want one to the monitor port", svc.Spec.Ports)
			}
			for _, ing := range r.ingresses {
				for _, rule := range ing.Spec.Rules {
					for _, p := range rule.HTTP.Paths {
						if b := p.Backend.Service; b == nil || b.Name != svc.Name || b.Port.Name != svc.Spec.Ports[0].Name {
							t.Errorf("Ingress %s routes %s to %+v, want the monitor Service", ing.Name, p.Path, p.Backend)
						}
					}
				}
				if len(ing.Spec.TLS) == 0 {
					t.Errorf("Ingress %s without TLS: the dashboard takes credentials", ing.Name)
				}
			}
		})
	}
	if len(render(t, "overlays/production").ingresses) != 1 {
		t.Error("the production overlay has no Ingress for the monitor")
	}
}

func TestNodeAgentDaemonSet(t *testing.T) {
	for _, r := range renderAll(t) {
		t.Run(r.name, func(t *testing.T) {
			ds, ok := r.daemonSets["stargazer-node"]
			if !ok {
				t.Fatal("no DaemonSet stargazer-node")
			}
			pod := ds.Spec.Template.Spec
			c := pod.Containers[0]
			if env := r.env(t, c); env["ROLE"] != "node" {
				t.Errorf("ROLE = %q, want node", env["ROLE"])
			}
			if !strings.Contains(c.Image, "stargazer-jobs/node") {
				t.Errorf("image %s, want the node image (it has journalctl)", c.Image)
			}
			hostPaths := map[string]string{} // volume name -> host path
			for _, v := range pod.Volumes {
				if v.HostPath != nil {
					hostPaths[v.Name] = v.HostPath.Path
				}
			}
			mounted := map[string]bool{}
			for _, m := range c.VolumeMounts {
				hp, isHost := hostPaths[m.Name]
				if !isHost {
					continue
				}
				if !m.ReadOnly {
					t.Errorf("host path %s is mounted writable", hp)
				}
				if m.MountPath != hp {
					t.Errorf("host path %s mounted at %s: journalctl looks at the same path", hp, m.MountPath)
				}
				mounted[hp] = true
			}
			for _, want := range []string{"/var/log/journal", "/run/log/journal", "/etc/machine-id"} {
				if !mounted[want] {
					t.Errorf("%s is not mounted (read-only) from the host", want)
				}
			}
			if len(mounted) != 3 {
				t.Errorf("host paths mounted: %v, want only the journal and the machine id", mounted)
			}
		})
	}
}

// TestPodSecurity: non-root, read-only root filesystem, no privilege
// escalation, every capability dropped, resources requested and limited.
func TestPodSecurityAndResources(t *testing.T) {
	for _, r := range renderAll(t) {
		for _, w := range r.workloads() {
			t.Run(r.name+"/"+w.name, func(t *testing.T) {
				psc := w.pod.SecurityContext
				if psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot || psc.RunAsUser == nil || *psc.RunAsUser == 0 {
					t.Error("pod: runAsNonRoot with a non-zero runAsUser required")
				}
				if psc == nil || psc.SeccompProfile == nil || psc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
					t.Error("pod: seccompProfile RuntimeDefault required")
				}
				if w.pod.HostNetwork || w.pod.HostPID || w.pod.HostIPC {
					t.Error("pod shares a host namespace")
				}
				for _, c := range append(slices.Clone(w.pod.InitContainers), w.pod.Containers...) {
					sc := c.SecurityContext
					switch {
					case sc == nil:
						t.Errorf("%s: no securityContext", c.Name)
						continue
					case sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation:
						t.Errorf("%s: allowPrivilegeEscalation must be false", c.Name)
					case sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem:
						t.Errorf("%s: readOnlyRootFilesystem must be true", c.Name)
					case sc.Privileged != nil && *sc.Privileged:
						t.Errorf("%s: privileged", c.Name)
					case sc.Capabilities == nil || !slices.Contains(sc.Capabilities.Drop, "ALL") || len(sc.Capabilities.Add) > 0:
						t.Errorf("%s: capabilities must drop ALL and add none", c.Name)
					}
					for _, res := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
						req, hasReq := c.Resources.Requests[res]
						lim, hasLim := c.Resources.Limits[res]
						if !hasReq || !hasLim {
							t.Errorf("%s: %s needs a request and a limit", c.Name, res)
							continue
						}
						if req.Cmp(lim) > 0 {
							t.Errorf("%s: %s request %s above its limit %s", c.Name, res, req.String(), lim.String())
						}
					}
					// docs/performance.md: 22.6 MiB idle, 28.8 MiB at the peak of
					// 20,000 no-op tasks. A request below that would be a lie.
					if mem := c.Resources.Requests[corev1.ResourceMemory]; mem.Value() < 29<<20 {
						t.Errorf("%s: memory request %s is below the measured peak (28.8 MiB)", c.Name, mem.String())
					}
				}
			})
		}
	}
}

func TestPodDisruptionBudgetCoversTheWorkers(t *testing.T) {
	for _, r := range renderAll(t) {
		t.Run(r.name, func(t *testing.T) {
			d := r.deployment(t, "stargazer-worker")
			var found bool
			for _, p := range r.pdbs {
				sel := labels.SelectorFromSet(p.Spec.Selector.MatchLabels)
				if len(p.Spec.Selector.MatchExpressions) > 0 || !sel.Matches(labels.Set(d.Spec.Template.Labels)) {
					continue
				}
				found = true
				if (p.Spec.MaxUnavailable == nil) == (p.Spec.MinAvailable == nil) {
					t.Errorf("PDB %s: set exactly one of maxUnavailable and minAvailable", p.Name)
				}
				if mu := p.Spec.MaxUnavailable; mu != nil && (mu.Type != intstr.Int || mu.IntVal < 1 || mu.IntVal > 1) {
					t.Errorf("PDB %s: maxUnavailable %s, want 1 of 3 workers", p.Name, mu.String())
				}
				if p.Spec.UnhealthyPodEvictionPolicy == nil || *p.Spec.UnhealthyPodEvictionPolicy != policyv1.AlwaysAllow {
					t.Errorf("PDB %s: unready workers (Redis down) would block every node drain", p.Name)
				}
			}
			if !found {
				t.Error("no PodDisruptionBudget selects the worker pods")
			}
		})
	}
}

var readmeSettingRow = regexp.MustCompile("(?m)^\\| `([A-Z0-9_]+)` \\|.*$")

// readmeSettings maps each variable of the README's configuration table to
// its row.
func readmeSettings(t *testing.T) map[string]string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(repoRoot, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, m := range readmeSettingRow.FindAllStringSubmatch(string(data), -1) {
		out[m[1]] = m[0]
	}
	return out
}

// TestManifestEnvironmentIsWorkerSettings: every variable set in any
// manifest is a setting the worker reads (config.Settings), every secret
// setting comes from the Secret (never a literal), every Secret key is
// documented in the README as never logged, and the settings load.
func TestManifestEnvironmentIsWorkerSettings(t *testing.T) {
	settings := settingsByEnv()
	readme := readmeSettings(t)
	for _, r := range renderAll(t) {
		for _, w := range r.workloads() {
			for _, c := range w.pod.Containers {
				t.Run(r.name+"/"+w.name+"/"+c.Name, func(t *testing.T) {
					env := r.env(t, c)
					for _, e := range c.Env {
						if ref := valueFromSecret(e); ref != nil {
							if ref.Name != secretName {
								t.Errorf("%s from Secret %q, want %q (the one the README creates)", e.Name, ref.Name, secretName)
							}
							if ref.Key != e.Name {
								t.Errorf("%s from Secret key %s: name the key after the setting it holds", e.Name, ref.Key)
							}
							row, ok := readme[ref.Key]
							if !ok {
								t.Errorf("Secret key %s is not in the README's configuration table", ref.Key)
							} else if !strings.Contains(row, "Never logged") {
								t.Errorf("Secret key %s: its README row does not say it is never logged", ref.Key)
							}
						}
					}
					for name, v := range env {
						s, ok := settings[name]
						if !ok {
							t.Errorf("%s is set but the worker reads no such setting", name)
							continue
						}
						if s.Secret && !strings.HasPrefix(v, "<secret:") {
							t.Errorf("%s is a secret setting given in the manifest; take it from the Secret", name)
						}
					}
					// The values load as the worker loads them, with stand-ins for
					// the Secret and the downward API.
					resolved := map[string]string{}
					for k, v := range env {
						switch {
						case strings.HasPrefix(v, "<secret:REDIS_URL"):
							v = "redis://redis:6379/0"
						case strings.HasPrefix(v, "<secret:FALKORDB_URL"):
							v = "redis://falkordb:6379"
						case strings.HasPrefix(v, "<secret:"):
							v = "stand-in-secret"
						case strings.HasPrefix(v, "<field:"):
							v = "7c9d8f6b5"
						}
						resolved[k] = v
					}
					_, err := config.Load(func(k string) string { return resolved[k] }, nil, io.Discard)
					if err != nil {
						t.Errorf("the worker would refuse this environment: %v", err)
					}
				})
			}
		}
	}
}

func valueFromSecret(e corev1.EnvVar) *corev1.SecretKeySelector {
	if e.ValueFrom == nil {
		return nil
	}
	return e.ValueFrom.SecretKeyRef
}

// selects reports whether a NetworkPolicy peer selects pods labelled l in
// some namespace.
func peerSelects(p networkingv1.NetworkPolicyPeer, l map[string]string) bool {
	return p.PodSelector != nil && labels.SelectorFromSet(p.PodSelector.MatchLabels).Matches(labels.Set(l)) && p.IPBlock == nil
}

func hasPort(ports []networkingv1.NetworkPolicyPort, proto corev1.Protocol, port int) bool {
	return slices.ContainsFunc(ports, func(p networkingv1.NetworkPolicyPort) bool {
		return p.Port != nil && p.Port.IntValue() == port && (p.Protocol == nil || *p.Protocol == proto)
	})
}

var (
	prometheusPod = map[string]string{"app.kubernetes.io/name": "prometheus"}
	redisPod      = map[string]string{"app.kubernetes.io/name": "redis"}
	falkorPod     = map[string]string{"app.kubernetes.io/name": "falkordb"}
	dnsPod        = map[string]string{"k8s-app": "kube-dns"}
)

// allowsEgress reports whether rules let traffic to pods labelled to (or,
// with to nil, to an outside address) on proto/port.
func allowsEgress(rules []networkingv1.NetworkPolicyEgressRule, to map[string]string, proto corev1.Protocol, port int) bool {
	return slices.ContainsFunc(rules, func(r networkingv1.NetworkPolicyEgressRule) bool {
		if !hasPort(r.Ports, proto, port) {
			return false
		}
		return slices.ContainsFunc(r.To, func(p networkingv1.NetworkPolicyPeer) bool {
			if to == nil {
				return p.IPBlock != nil && p.IPBlock.CIDR == "0.0.0.0/0"
			}
			return peerSelects(p, to)
		})
	})
}

func TestNetworkPolicies(t *testing.T) {
	for _, r := range renderAll(t) {
		t.Run(r.name, func(t *testing.T) {
			// Every pod is covered by a policy restricting both directions.
			for _, w := range r.workloads() {
				covered := false
				for _, np := range r.netpols {
					if labels.SelectorFromSet(np.Spec.PodSelector.MatchLabels).Matches(labels.Set(w.labels)) &&
						slices.Contains(np.Spec.PolicyTypes, networkingv1.PolicyTypeIngress) &&
						slices.Contains(np.Spec.PolicyTypes, networkingv1.PolicyTypeEgress) {
						covered = true
					}
				}
				if !covered {
					t.Errorf("%s: no NetworkPolicy restricts its ingress and egress", w.name)
				}
			}
			np, ok := r.netpols["stargazer-worker"]
			if !ok {
				t.Fatal("no NetworkPolicy stargazer-worker")
			}
			worker := r.deployment(t, "stargazer-worker").Spec.Template.Labels
			if !labels.SelectorFromSet(np.Spec.PodSelector.MatchLabels).Matches(labels.Set(worker)) {
				t.Fatal("stargazer-worker policy does not select the worker pods")
			}
			// Ingress of workers and node agents: nothing but Prometheus,
			// on the probe port only.
			for _, name := range []string{"stargazer-worker", "stargazer-node"} {
				np, ok := r.netpols[name]
				if !ok {
					t.Fatalf("no NetworkPolicy %s", name)
				}
				if len(np.Spec.Ingress) != 1 {
					t.Fatalf("%s: %d ingress rules, want one (Prometheus)", name, len(np.Spec.Ingress))
				}
				in := np.Spec.Ingress[0]
				if len(in.Ports) != 1 || !hasPort(in.Ports, corev1.ProtocolTCP, probePort) {
					t.Errorf("%s: ingress ports %+v, want only TCP %d", name, in.Ports, probePort)
				}
				onlyPrometheus(t, name, in)
			}
			// The monitor: the dashboard port to anyone the Service lets
			// in, the probe port to Prometheus alone.
			mp, ok := r.netpols["stargazer-monitor"]
			if !ok {
				t.Fatal("no NetworkPolicy stargazer-monitor")
			}
			open := false
			for _, in := range mp.Spec.Ingress {
				if hasPort(in.Ports, corev1.ProtocolTCP, probePort) {
					if len(in.Ports) != 1 {
						t.Errorf("stargazer-monitor: the probe port shares a rule with %+v", in.Ports)
					}
					onlyPrometheus(t, "stargazer-monitor", in)
				}
				if hasPort(in.Ports, corev1.ProtocolTCP, monitorPort) && len(in.From) == 0 {
					open = true
				}
			}
			if !open {
				t.Error("stargazer-monitor: the dashboard port is not open to the Service's clients")
			}
			if !slices.ContainsFunc(mp.Spec.Ingress, func(in networkingv1.NetworkPolicyIngressRule) bool {
				return hasPort(in.Ports, corev1.ProtocolTCP, probePort)
			}) {
				t.Error("stargazer-monitor: Prometheus cannot reach the probe port")
			}
			// Egress: Redis, FalkorDB, the LLM (HTTPS), DNS.
			for _, want := range []struct {
				what  string
				to    map[string]string
				proto corev1.Protocol
				port  int
			}{
				{"Redis", redisPod, corev1.ProtocolTCP, 6379},
				{"FalkorDB", falkorPod, corev1.ProtocolTCP, 6379},
				{"the LLM over HTTPS", nil, corev1.ProtocolTCP, 443},
				{"DNS over UDP", dnsPod, corev1.ProtocolUDP, 53},
				{"DNS over TCP", dnsPod, corev1.ProtocolTCP, 53},
			} {
				if !allowsEgress(np.Spec.Egress, want.to, want.proto, want.port) {
					t.Errorf("workers cannot reach %s (%s %d)", want.what, want.proto, want.port)
				}
			}
			for _, port := range []int{monitorPort, probePort} {
				if allowsEgress(np.Spec.Egress, prometheusPod, corev1.ProtocolTCP, port) {
					t.Errorf("workers may reach other pods' port %d", port)
				}
			}
		})
	}
}

// onlyPrometheus checks that an ingress rule admits Prometheus pods alone.
func onlyPrometheus(t *testing.T, policy string, in networkingv1.NetworkPolicyIngressRule) {
	t.Helper()
	if len(in.From) == 0 {
		t.Errorf("%s: ingress on %+v from anywhere", policy, in.Ports)
	}
	for _, p := range in.From {
		if !peerSelects(p, prometheusPod) || p.PodSelector == nil || len(p.PodSelector.MatchLabels) == 0 {
			t.Errorf("%s: ingress from %+v, want only Prometheus pods", policy, p)
		}
	}
}

// TestMonitoringObjects: the PodMonitor scrapes every stargazer-jobs pod on
// its probe port, the PrometheusRule is alerts.yml, the dashboard
// ConfigMap is stargazer.json, and the ScaledObject scales the workers on
// the pending-task metric.
func TestMonitoringObjects(t *testing.T) {
	for _, r := range renderAll(t) {
		if r.name == "base" {
			continue // the base needs no CRDs
		}
		t.Run(r.name, func(t *testing.T) {
			if len(r.podMonitors) != 1 || len(r.promRules) != 1 {
				t.Fatalf("%d PodMonitors and %d PrometheusRules, want one each", len(r.podMonitors), len(r.promRules))
			}
			pm := r.podMonitors[0]
			for _, w := range r.workloads() {
				if !labels.SelectorFromSet(pm.Spec.Selector.MatchLabels).Matches(labels.Set(w.labels)) {
					t.Errorf("the PodMonitor does not scrape %s", w.name)
				}
				for _, ep := range pm.Spec.PodMetricsEndpoints {
					if p := portNumber(w.pod.Containers[0], intstr.FromString(ep.Port)); p != probePort || ep.Path != "/metrics" {
						t.Errorf("%s: scraped on port %q (%d) path %s", w.name, ep.Port, p, ep.Path)
					}
				}
			}
			jobRelabel := slices.ContainsFunc(pm.Spec.PodMetricsEndpoints[0].Relabelings, func(rl struct {
				SourceLabels []string `json:"sourceLabels"`
				TargetLabel  string   `json:"targetLabel"`
				Replacement  string   `json:"replacement"`
			}) bool {
				return rl.TargetLabel == "job" && rl.Replacement == "stargazer-$1"
			})
			if !jobRelabel {
				t.Error("the PodMonitor does not name the jobs stargazer-<component>, as the rules expect")
			}
			gb, wb := fmt.Sprint(r.promRules[0].Spec.Groups), fmt.Sprint(rulesFromAlerts(t))
			if gb != wb {
				t.Error("the rendered PrometheusRule differs from alerts.yml")
			}
			dash, err := os.ReadFile(dashboardFile)
			if err != nil {
				t.Fatal(err)
			}
			cm, ok := r.configMaps["stargazer-grafana-dashboard"]
			if !ok || cm.Data["stargazer.json"] != string(dash) || cm.Labels["grafana_dashboard"] != "1" {
				t.Error("no ConfigMap stargazer-grafana-dashboard labelled grafana_dashboard=1 holding stargazer.json")
			}
		})
	}
	r := render(t, "overlays/production")
	if len(r.scaledObjs) != 1 {
		t.Fatalf("production: %d ScaledObjects, want 1", len(r.scaledObjs))
	}
	so := r.scaledObjs[0]
	if so.Spec.ScaleTargetRef.Name != "stargazer-worker" {
		t.Errorf("ScaledObject scales %s", so.Spec.ScaleTargetRef.Name)
	}
	if so.Spec.MaxReplicaCount == nil || so.Spec.MinReplicaCount == nil || *so.Spec.MaxReplicaCount <= *so.Spec.MinReplicaCount {
		t.Error("ScaledObject needs a minimum below its maximum")
	}
	if len(so.Spec.Triggers) != 1 || so.Spec.Triggers[0].Type != "prometheus" {
		t.Fatalf("triggers %+v, want one prometheus trigger", so.Spec.Triggers)
	}
	md := so.Spec.Triggers[0].Metadata
	names, err := metricsOf(t, md["query"])
	if err != nil {
		t.Fatalf("ScaledObject query: %v", err)
	}
	if !slices.Equal(names, []string{"stargazer_queue_tasks"}) || !strings.Contains(md["query"], `state="pending"`) {
		t.Errorf("ScaledObject query %q, want one on stargazer_queue_tasks{state=\"pending\"}", md["query"])
	}
	if md["serverAddress"] == "" || md["threshold"] == "" {
		t.Errorf("trigger metadata %v lacks serverAddress or threshold", md)
	}
}
