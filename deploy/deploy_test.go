package deploy

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
)

// metricKind is how a metric is exposed, which decides how PromQL may use it.
type metricKind int

const (
	counter metricKind = iota
	gauge
	histogram
)

// metricSpec is one metric of the contract between sluice and its dashboards.
type metricSpec struct {
	kind   metricKind
	labels []string // labels beyond the target's job and instance
}

var sourceLabels = []string{"project_id", "source_id", "broker"}

// metricContract lists every metric the deploy artifacts may refer to, with
// its type and labels. It mirrors what sluice exports; a dashboard query on
// anything else is a typo or a metric that no longer exists.
func metricContract() map[string]metricSpec {
	perSource := func(k metricKind, extra ...string) metricSpec {
		return metricSpec{kind: k, labels: append(slices.Clone(sourceLabels), extra...)}
	}
	return map[string]metricSpec{
		"sluice_messages_received_total":      perSource(counter),
		"sluice_messages_dispatched_total":    perSource(counter),
		"sluice_messages_duplicate_total":     perSource(counter),
		"sluice_messages_dead_lettered_total": perSource(counter, "reason"),
		"sluice_transient_failures_total":     perSource(counter),
		"sluice_batch_size":                   perSource(histogram),
		"sluice_dispatch_latency_seconds":     perSource(histogram),
		"sluice_messages_in_flight":           perSource(gauge),
		"sluice_workers":                      perSource(gauge, "state"),
		"sluice_consumer_lag":                 perSource(gauge),
		"sluice_dispatch_stream_length":       {kind: gauge},
		"sluice_backpressure_engaged":         {kind: gauge},
		"sluice_reconcile_duration_seconds":   {kind: histogram},
		"sluice_reconcile_failures_total":     {kind: counter},
		"sluice_redis_errors_total":           {kind: counter},
		"go_goroutines":                       {kind: gauge},
		"process_resident_memory_bytes":       {kind: gauge},
	}
}

// targetLabels are attached by the scraper to every series.
var targetLabels = []string{"job", "instance"}

const (
	composeFile   = "compose/docker-compose.yaml"
	kubeDir       = "kubernetes"
	dashboardFile = "grafana/sluice-dashboard.json"
)

// ---------------------------------------------------------------- helpers

type doc = map[string]any

// yamlDocs parses every document of a YAML file, skipping empty ones.
func yamlDocs(t *testing.T, path string) []doc {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read %s: %v", path, err)
	}
	var docs []doc
	dec := yaml.NewDecoder(bytes.NewReader(b))
	for {
		var d doc
		err := dec.Decode(&d)
		if errors.Is(err, io.EOF) {
			return docs
		}
		if err != nil {
			t.Fatalf("parse %s (document %d): %v", path, len(docs)+1, err)
		}
		if d != nil {
			docs = append(docs, d)
		}
	}
}

// strictDecode re-decodes a parsed document into v, failing on any field v
// does not declare: a misspelt field is silently ignored by Kubernetes and
// Compose, so it must fail here.
func strictDecode(t *testing.T, d doc, v any) {
	t.Helper()
	b, err := yaml.Marshal(d)
	if err != nil {
		t.Fatal(err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(v); err != nil {
		t.Fatalf("%s %v: %v", d["kind"], dig(d, "metadata", "name"), err)
	}
}

// dig walks nested maps; it returns nil when a key is missing.
func dig(v any, keys ...string) any {
	for _, k := range keys {
		m, ok := v.(doc)
		if !ok {
			return nil
		}
		v = m[k]
	}
	return v
}

func str(v any) string {
	s, _ := v.(string)
	return s
}

func stringMap(t *testing.T, v any) map[string]string {
	t.Helper()
	out := map[string]string{}
	m, ok := v.(doc)
	if !ok && v != nil {
		t.Fatalf("want a map, got %T", v)
	}
	for k, x := range m {
		s, ok := x.(string)
		if !ok {
			t.Fatalf("value of %q is %T, want a string (quote it)", k, x)
		}
		out[k] = s
	}
	return out
}

// subset reports whether every key/value of sel is in labels.
func subset(sel, labels map[string]string) bool {
	if len(sel) == 0 {
		return false // an empty selector selects everything: never what we mean
	}
	for k, v := range sel {
		if labels[k] != v {
			return false
		}
	}
	return true
}

func filesWithExt(t *testing.T, root string, exts ...string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(root, func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !e.IsDir() && slices.Contains(exts, filepath.Ext(p)) {
			out = append(out, p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// ---------------------------------------------------------------- parsing

func TestEveryYAMLAndJSONFileParses(t *testing.T) {
	t.Parallel()
	yamls := filesWithExt(t, ".", ".yaml", ".yml")
	if len(yamls) < 2 {
		t.Fatalf("found %d YAML files, want the compose file and the Kubernetes manifests", len(yamls))
	}
	for _, p := range yamls {
		if len(yamlDocs(t, p)) == 0 {
			t.Errorf("%s: no YAML document", p)
		}
	}
	jsons := filesWithExt(t, ".", ".json")
	if len(jsons) == 0 {
		t.Fatal("found no JSON file, want the Grafana dashboard")
	}
	for _, p := range jsons {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		var v any
		if err := json.Unmarshal(b, &v); err != nil {
			t.Errorf("%s: %v", p, err)
		}
	}
}

// ---------------------------------------------------------------- Kubernetes

// manifests loads every Kubernetes document under kubernetes/ (the
// kustomization aside), keyed by kind.
func manifests(t *testing.T) (byKind map[string][]doc, files []string) {
	t.Helper()
	byKind = map[string][]doc{}
	for _, p := range filesWithExt(t, kubeDir, ".yaml", ".yml") {
		if filepath.Base(p) == "kustomization.yaml" {
			continue
		}
		files = append(files, filepath.Base(p))
		for _, d := range yamlDocs(t, p) {
			kind := str(d["kind"])
			if str(d["apiVersion"]) == "" || kind == "" || str(dig(d, "metadata", "name")) == "" {
				t.Fatalf("%s: a document lacks apiVersion, kind or metadata.name", p)
			}
			if ns := dig(d, "metadata", "namespace"); ns != nil {
				t.Errorf("%s: %s sets metadata.namespace %v; the manifests are namespace-agnostic", p, kind, ns)
			}
			byKind[kind] = append(byKind[kind], d)
		}
	}
	return byKind, files
}

func only(t *testing.T, byKind map[string][]doc, kind string) doc {
	t.Helper()
	if n := len(byKind[kind]); n != 1 {
		t.Fatalf("want exactly one %s, found %d", kind, n)
	}
	return byKind[kind][0]
}

// deployment is the part of apps/v1 Deployment these manifests may use, with
// Kubernetes' own field names. strictDecode rejects anything else.
type deployment struct {
	APIVersion string     `yaml:"apiVersion"`
	Kind       string     `yaml:"kind"`
	Metadata   objectMeta `yaml:"metadata"`
	Spec       struct {
		Replicas             int           `yaml:"replicas"`
		RevisionHistoryLimit *int          `yaml:"revisionHistoryLimit"`
		Selector             labelSelector `yaml:"selector"`
		Strategy             struct {
			Type          string `yaml:"type"`
			RollingUpdate struct {
				MaxSurge       any `yaml:"maxSurge"`
				MaxUnavailable any `yaml:"maxUnavailable"`
			} `yaml:"rollingUpdate"`
		} `yaml:"strategy"`
		Template struct {
			Metadata objectMeta `yaml:"metadata"`
			Spec     podSpec    `yaml:"spec"`
		} `yaml:"template"`
	} `yaml:"spec"`
}

type objectMeta struct {
	Name        string            `yaml:"name"`
	Labels      map[string]string `yaml:"labels"`
	Annotations map[string]string `yaml:"annotations"`
}

type labelSelector struct {
	MatchLabels map[string]string `yaml:"matchLabels"`
}

type podSpec struct {
	AutomountServiceAccountToken  *bool  `yaml:"automountServiceAccountToken"`
	EnableServiceLinks            *bool  `yaml:"enableServiceLinks"`
	ServiceAccountName            string `yaml:"serviceAccountName"`
	PriorityClassName             string `yaml:"priorityClassName"`
	TerminationGracePeriodSeconds *int   `yaml:"terminationGracePeriodSeconds"`
	SecurityContext               struct {
		RunAsNonRoot   *bool           `yaml:"runAsNonRoot"`
		RunAsUser      *int64          `yaml:"runAsUser"`
		RunAsGroup     *int64          `yaml:"runAsGroup"`
		FSGroup        *int64          `yaml:"fsGroup"`
		SeccompProfile *seccompProfile `yaml:"seccompProfile"`
	} `yaml:"securityContext"`
	TopologySpreadConstraints []struct {
		MaxSkew           int           `yaml:"maxSkew"`
		TopologyKey       string        `yaml:"topologyKey"`
		WhenUnsatisfiable string        `yaml:"whenUnsatisfiable"`
		LabelSelector     labelSelector `yaml:"labelSelector"`
	} `yaml:"topologySpreadConstraints"`
	Affinity     any               `yaml:"affinity"`
	NodeSelector map[string]string `yaml:"nodeSelector"`
	Tolerations  any               `yaml:"tolerations"`
	Containers   []container       `yaml:"containers"`
	Volumes      []struct {
		Name     string `yaml:"name"`
		EmptyDir *struct {
			Medium    string `yaml:"medium"`
			SizeLimit string `yaml:"sizeLimit"`
		} `yaml:"emptyDir"`
	} `yaml:"volumes"`
}

type seccompProfile struct {
	Type string `yaml:"type"`
}

type container struct {
	Name            string   `yaml:"name"`
	Image           string   `yaml:"image"`
	ImagePullPolicy string   `yaml:"imagePullPolicy"`
	Command         []string `yaml:"command"`
	Args            []string `yaml:"args"`
	Ports           []struct {
		Name          string `yaml:"name"`
		ContainerPort int    `yaml:"containerPort"`
		Protocol      string `yaml:"protocol"`
	} `yaml:"ports"`
	Env []struct {
		Name      string `yaml:"name"`
		Value     string `yaml:"value"`
		ValueFrom any    `yaml:"valueFrom"`
	} `yaml:"env"`
	EnvFrom []struct {
		ConfigMapRef *struct {
			Name string `yaml:"name"`
		} `yaml:"configMapRef"`
		SecretRef *struct {
			Name string `yaml:"name"`
		} `yaml:"secretRef"`
	} `yaml:"envFrom"`
	StartupProbe   *probe `yaml:"startupProbe"`
	ReadinessProbe *probe `yaml:"readinessProbe"`
	LivenessProbe  *probe `yaml:"livenessProbe"`
	Resources      struct {
		Requests map[string]string `yaml:"requests"`
		Limits   map[string]string `yaml:"limits"`
	} `yaml:"resources"`
	SecurityContext struct {
		RunAsNonRoot             *bool           `yaml:"runAsNonRoot"`
		RunAsUser                *int64          `yaml:"runAsUser"`
		RunAsGroup               *int64          `yaml:"runAsGroup"`
		ReadOnlyRootFilesystem   *bool           `yaml:"readOnlyRootFilesystem"`
		AllowPrivilegeEscalation *bool           `yaml:"allowPrivilegeEscalation"`
		Privileged               *bool           `yaml:"privileged"`
		SeccompProfile           *seccompProfile `yaml:"seccompProfile"`
		Capabilities             struct {
			Drop []string `yaml:"drop"`
			Add  []string `yaml:"add"`
		} `yaml:"capabilities"`
	} `yaml:"securityContext"`
	VolumeMounts []struct {
		Name      string `yaml:"name"`
		MountPath string `yaml:"mountPath"`
		ReadOnly  bool   `yaml:"readOnly"`
	} `yaml:"volumeMounts"`
}

type probe struct {
	HTTPGet *struct {
		Path   string `yaml:"path"`
		Port   any    `yaml:"port"` // a port name or number
		Scheme string `yaml:"scheme"`
	} `yaml:"httpGet"`
	InitialDelaySeconds int `yaml:"initialDelaySeconds"`
	PeriodSeconds       int `yaml:"periodSeconds"`
	TimeoutSeconds      int `yaml:"timeoutSeconds"`
	FailureThreshold    int `yaml:"failureThreshold"`
	SuccessThreshold    int `yaml:"successThreshold"`
}

// portNumber resolves a probe or Service target port (name or number) against
// the container's declared ports; 0 when it names none of them.
func (c container) portNumber(p any) int {
	for _, cp := range c.Ports {
		switch v := p.(type) {
		case string:
			if v == cp.Name {
				return cp.ContainerPort
			}
		case int:
			if v == cp.ContainerPort {
				return v
			}
		}
	}
	return 0
}

// quantity parses the Kubernetes quantities used here (m, Ki, Mi, Gi, plain).
func quantity(t *testing.T, s string) float64 {
	t.Helper()
	mult := 1.0
	for suf, m := range map[string]float64{"m": 1e-3, "Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30} {
		if n, ok := strings.CutSuffix(s, suf); ok {
			s, mult = n, m
			break
		}
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil {
		t.Fatalf("quantity %q: %v", s, err)
	}
	return f * mult
}

func TestKubernetesManifests(t *testing.T) {
	t.Parallel()
	byKind, files := manifests(t)

	t.Run("kustomization lists every manifest", func(t *testing.T) {
		k := yamlDocs(t, filepath.Join(kubeDir, "kustomization.yaml"))[0]
		var listed []string
		for _, r := range k["resources"].([]any) {
			listed = append(listed, r.(string))
		}
		slices.Sort(listed)
		slices.Sort(files)
		if !slices.Equal(listed, files) {
			t.Errorf("kustomization resources %v, manifest files %v", listed, files)
		}
	})

	var d deployment
	strictDecode(t, only(t, byKind, "Deployment"), &d)
	pod := d.Spec.Template.Spec
	podLabels := d.Spec.Template.Metadata.Labels
	cm := stringMap(t, only(t, byKind, "ConfigMap")["data"])
	secret := only(t, byKind, "Secret")
	svc := only(t, byKind, "Service")
	if len(pod.Containers) != 1 {
		t.Fatalf("want one container, found %d", len(pod.Containers))
	}
	c := pod.Containers[0]

	t.Run("deployment", func(t *testing.T) {
		if d.APIVersion != "apps/v1" {
			t.Errorf("Deployment apiVersion %q", d.APIVersion)
		}
		if d.Spec.Replicas < 2 {
			t.Errorf("replicas %d, want at least 2", d.Spec.Replicas)
		}
		if !subset(d.Spec.Selector.MatchLabels, podLabels) {
			t.Errorf("selector %v does not select the pod labels %v", d.Spec.Selector.MatchLabels, podLabels)
		}
		if c.Image == "" || !slices.Equal(c.Args, []string{"serve"}) {
			t.Errorf("container image %q args %q, want an image and [serve]", c.Image, c.Args)
		}
		if len(pod.TopologySpreadConstraints) == 0 && pod.Affinity == nil {
			t.Error("no topologySpreadConstraints nor affinity: replicas may share a node")
		}
		for _, tsc := range pod.TopologySpreadConstraints {
			if !subset(tsc.LabelSelector.MatchLabels, podLabels) {
				t.Errorf("topology spread on %s selects %v, not the pods", tsc.TopologyKey, tsc.LabelSelector.MatchLabels)
			}
		}
		for _, p := range c.Ports {
			if p.Name == "" || p.ContainerPort == 0 {
				t.Errorf("port %+v: want a name and a number", p)
			}
		}
	})

	t.Run("probes", func(t *testing.T) {
		for name, tc := range map[string]struct {
			p    *probe
			path string
		}{
			"readinessProbe": {c.ReadinessProbe, "/readyz"},
			"livenessProbe":  {c.LivenessProbe, "/healthz"},
			"startupProbe":   {c.StartupProbe, ""},
		} {
			if tc.p == nil || tc.p.HTTPGet == nil {
				t.Errorf("%s: want an httpGet probe", name)
				continue
			}
			if tc.path != "" && tc.p.HTTPGet.Path != tc.path {
				t.Errorf("%s path %q, want %q", name, tc.p.HTTPGet.Path, tc.path)
			}
			if c.portNumber(tc.p.HTTPGet.Port) == 0 {
				t.Errorf("%s port %v is not a declared container port", name, tc.p.HTTPGet.Port)
			}
		}
		_, listen, err := net.SplitHostPort(cm["SLUICE_LISTEN"])
		if err != nil {
			t.Fatalf("SLUICE_LISTEN %q: %v", cm["SLUICE_LISTEN"], err)
		}
		if c.ReadinessProbe != nil && c.ReadinessProbe.HTTPGet != nil {
			if got := strconv.Itoa(c.portNumber(c.ReadinessProbe.HTTPGet.Port)); got != listen {
				t.Errorf("probes hit port %s, sluice listens on %s", got, listen)
			}
		}
	})

	t.Run("security context", func(t *testing.T) {
		sc, psc := c.SecurityContext, pod.SecurityContext
		isTrue := func(b *bool) bool { return b != nil && *b }
		if !isTrue(psc.RunAsNonRoot) && !isTrue(sc.RunAsNonRoot) {
			t.Error("runAsNonRoot is not set")
		}
		for _, uid := range []*int64{psc.RunAsUser, sc.RunAsUser} {
			if uid != nil && *uid == 0 {
				t.Error("runAsUser 0")
			}
		}
		if psc.RunAsUser == nil && sc.RunAsUser == nil {
			t.Error("no runAsUser: a distroless nonroot image needs 65532 spelt out for runAsNonRoot")
		}
		if !isTrue(sc.ReadOnlyRootFilesystem) {
			t.Error("readOnlyRootFilesystem is not true")
		}
		if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
			t.Error("allowPrivilegeEscalation is not false")
		}
		if isTrue(sc.Privileged) {
			t.Error("privileged")
		}
		if !slices.Contains(sc.Capabilities.Drop, "ALL") || len(sc.Capabilities.Add) > 0 {
			t.Errorf("capabilities drop %v add %v, want drop [ALL]", sc.Capabilities.Drop, sc.Capabilities.Add)
		}
		seccomp := sc.SeccompProfile
		if seccomp == nil {
			seccomp = psc.SeccompProfile
		}
		if seccomp == nil || seccomp.Type != "RuntimeDefault" {
			t.Error("seccompProfile is not RuntimeDefault")
		}
	})

	t.Run("resources", func(t *testing.T) {
		for _, r := range []string{"cpu", "memory"} {
			req, lim := c.Resources.Requests[r], c.Resources.Limits[r]
			if req == "" {
				t.Errorf("no %s request", r)
				continue
			}
			if lim != "" && quantity(t, req) > quantity(t, lim) {
				t.Errorf("%s request %s above limit %s", r, req, lim)
			}
		}
		if c.Resources.Limits["memory"] == "" {
			t.Error("no memory limit")
		}
	})

	t.Run("graceful shutdown fits the grace period", func(t *testing.T) {
		grace, err := time.ParseDuration(cm["SLUICE_SHUTDOWN_GRACE"])
		if err != nil {
			t.Fatalf("SLUICE_SHUTDOWN_GRACE %q: %v", cm["SLUICE_SHUTDOWN_GRACE"], err)
		}
		if pod.TerminationGracePeriodSeconds == nil {
			t.Fatal("terminationGracePeriodSeconds unset (Kubernetes' default is 30s)")
		}
		if kill := time.Duration(*pod.TerminationGracePeriodSeconds) * time.Second; kill <= grace {
			t.Errorf("terminationGracePeriodSeconds %v is not above SLUICE_SHUTDOWN_GRACE %v: in-flight batches get SIGKILLed", kill, grace)
		}
	})

	t.Run("config comes from the ConfigMap and Secret", func(t *testing.T) {
		var fromCM, fromSecret bool
		for _, e := range c.EnvFrom {
			if e.ConfigMapRef != nil && e.ConfigMapRef.Name == str(dig(only(t, byKind, "ConfigMap"), "metadata", "name")) {
				fromCM = true
			}
			if e.SecretRef != nil && e.SecretRef.Name == str(dig(secret, "metadata", "name")) {
				fromSecret = true
			}
		}
		if !fromCM || !fromSecret {
			t.Errorf("envFrom %+v does not load both the ConfigMap and the Secret", c.EnvFrom)
		}
		for _, k := range []string{"SLUICE_LISTEN", "SLUICE_PREFIX", "SLUICE_PUBLIC_URL", "SLUICE_LOG_FORMAT", "SLUICE_LOG_LEVEL", "SLUICE_SHUTDOWN_GRACE", "SLUICE_MAX_WORKERS"} {
			if cm[k] == "" {
				t.Errorf("ConfigMap lacks %s", k)
			}
		}
		sd := stringMap(t, secret["stringData"])
		for _, k := range []string{"SLUICE_REDIS_URL", "SLUICE_API_KEYS"} {
			if !strings.Contains(sd[k], "REPLACE_ME") {
				t.Errorf("Secret %s = %q, want a REPLACE_ME placeholder", k, sd[k])
			}
		}
		for k := range sd {
			if _, dup := cm[k]; dup {
				t.Errorf("%s is in both the ConfigMap and the Secret", k)
			}
		}
	})

	t.Run("service", func(t *testing.T) {
		if typ := str(dig(svc, "spec", "type")); typ != "" && typ != "ClusterIP" {
			t.Errorf("Service type %q, want ClusterIP", typ)
		}
		if sel := stringMap(t, dig(svc, "spec", "selector")); !subset(sel, podLabels) {
			t.Errorf("Service selector %v does not select the pod labels %v", sel, podLabels)
		}
		ports, _ := dig(svc, "spec", "ports").([]any)
		if len(ports) == 0 {
			t.Fatal("Service has no ports")
		}
		for _, p := range ports {
			if str(dig(p, "name")) == "" || c.portNumber(dig(p, "targetPort")) == 0 {
				t.Errorf("Service port %v: want a name and a targetPort the container declares", p)
			}
		}
	})

	t.Run("pod disruption budget", func(t *testing.T) {
		pdb := only(t, byKind, "PodDisruptionBudget")
		if sel := stringMap(t, dig(pdb, "spec", "selector", "matchLabels")); !subset(sel, podLabels) {
			t.Errorf("PDB selector %v does not select the pod labels %v", sel, podLabels)
		}
		minAvail, ok := dig(pdb, "spec", "minAvailable").(int)
		if !ok || minAvail < 1 || minAvail >= d.Spec.Replicas {
			t.Errorf("PDB minAvailable %v, want at least 1 and below the %d replicas (or drains block)", dig(pdb, "spec", "minAvailable"), d.Spec.Replicas)
		}
	})

	t.Run("service monitor", func(t *testing.T) {
		sm := only(t, byKind, "ServiceMonitor")
		if v := str(sm["apiVersion"]); v != "monitoring.coreos.com/v1" {
			t.Errorf("ServiceMonitor apiVersion %q", v)
		}
		svcLabels := stringMap(t, dig(svc, "metadata", "labels"))
		if sel := stringMap(t, dig(sm, "spec", "selector", "matchLabels")); !subset(sel, svcLabels) {
			t.Errorf("ServiceMonitor selector %v does not select the Service labels %v", sel, svcLabels)
		}
		var svcPorts []string
		for _, p := range dig(svc, "spec", "ports").([]any) {
			svcPorts = append(svcPorts, str(dig(p, "name")))
		}
		eps, _ := dig(sm, "spec", "endpoints").([]any)
		if len(eps) == 0 {
			t.Fatal("ServiceMonitor has no endpoints")
		}
		for _, ep := range eps {
			if !slices.Contains(svcPorts, str(dig(ep, "port"))) {
				t.Errorf("ServiceMonitor endpoint port %q is not a Service port name %v", dig(ep, "port"), svcPorts)
			}
			if str(dig(ep, "path")) != "/metrics" {
				t.Errorf("ServiceMonitor path %q, want /metrics", dig(ep, "path"))
			}
			if _, err := time.ParseDuration(str(dig(ep, "interval"))); err != nil {
				t.Errorf("ServiceMonitor interval: %v", err)
			}
		}
	})
}

// TestKustomizeBuild renders the kustomization with the kubectl on the PATH,
// which runs offline: it catches a kustomization kubectl cannot build and
// checks every manifest comes out of it.
func TestKustomizeBuild(t *testing.T) {
	t.Parallel()
	kubectl, err := exec.LookPath("kubectl")
	if err != nil {
		t.Skip("kubectl not installed; the kustomize build is not checked")
	}
	out, err := exec.Command(kubectl, "kustomize", kubeDir).CombinedOutput()
	if err != nil {
		t.Fatalf("kubectl kustomize: %v\n%s", err, out)
	}
	var rendered []string
	dec := yaml.NewDecoder(bytes.NewReader(out))
	for {
		var d doc
		if err := dec.Decode(&d); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatalf("parse kustomize output: %v", err)
		}
		rendered = append(rendered, str(d["kind"])+"/"+str(dig(d, "metadata", "name")))
	}
	byKind, _ := manifests(t)
	var want []string
	for kind, docs := range byKind {
		for _, d := range docs {
			want = append(want, kind+"/"+str(dig(d, "metadata", "name")))
		}
	}
	slices.Sort(rendered)
	slices.Sort(want)
	if !slices.Equal(rendered, want) {
		t.Errorf("kustomize rendered %v, manifests hold %v", rendered, want)
	}
}

// ---------------------------------------------------------------- compose

func TestCompose(t *testing.T) {
	t.Parallel()
	c := yamlDocs(t, composeFile)[0]
	services, _ := c["services"].(doc)
	for _, s := range []string{"sluice", "redis", "rabbitmq", "redpanda", "elasticmq", "pubsub"} {
		if services[s] == nil {
			t.Errorf("no %s service", s)
		}
	}
	for name, s := range services {
		if str(dig(s, "image")) == "" && dig(s, "build") == nil {
			t.Errorf("service %s has neither image nor build", name)
		}
		deps, _ := dig(s, "depends_on").(doc)
		for dep := range deps {
			if services[dep] == nil {
				t.Errorf("%s depends on unknown service %s", name, dep)
			}
			if str(dig(deps, dep, "condition")) == "service_healthy" && dig(services, dep, "healthcheck") == nil {
				t.Errorf("%s waits for %s to be healthy, which has no healthcheck", name, dep)
			}
		}
	}
	sluice := services["sluice"]
	if str(dig(sluice, "depends_on", "redis", "condition")) != "service_healthy" {
		t.Error("sluice does not wait for a healthy redis")
	}
	if !slices.Equal(anyStrings(dig(sluice, "command")), []string{"serve"}) {
		t.Errorf("sluice command %v, want [serve]", dig(sluice, "command"))
	}
	ctx := str(dig(sluice, "build", "context"))
	if fi, err := os.Stat(filepath.Join(filepath.Dir(composeFile), ctx)); err != nil || !fi.IsDir() {
		t.Fatalf("sluice build context %q: not a directory", ctx)
	}
	if _, err := os.Stat(filepath.Join(filepath.Dir(composeFile), ctx, "go.mod")); err != nil {
		t.Errorf("sluice build context %q is not the module root", ctx)
	}

	env := stringMap(t, dig(sluice, "environment"))
	t.Run("sluice reaches its peers by service name", func(t *testing.T) {
		u, err := url.Parse(env["SLUICE_REDIS_URL"])
		if err != nil || services[u.Hostname()] == nil {
			t.Errorf("SLUICE_REDIS_URL %q does not name a compose service", env["SLUICE_REDIS_URL"])
		}
		host, _, err := net.SplitHostPort(env["PUBSUB_EMULATOR_HOST"])
		if err != nil || services[host] == nil {
			t.Errorf("PUBSUB_EMULATOR_HOST %q does not name a compose service", env["PUBSUB_EMULATOR_HOST"])
		}
		_, port, err := net.SplitHostPort(env["SLUICE_LISTEN"])
		if err != nil {
			t.Fatalf("SLUICE_LISTEN %q: %v", env["SLUICE_LISTEN"], err)
		}
		if !slices.ContainsFunc(anyStrings(dig(sluice, "ports")), func(p string) bool { return strings.HasSuffix(p, ":"+port) }) {
			t.Errorf("sluice listens on %s, which no published port maps", port)
		}
	})
	t.Run("stop grace above the shutdown grace", func(t *testing.T) {
		grace, err := time.ParseDuration(env["SLUICE_SHUTDOWN_GRACE"])
		if err != nil {
			t.Fatalf("SLUICE_SHUTDOWN_GRACE: %v", err)
		}
		stop, err := time.ParseDuration(str(dig(sluice, "stop_grace_period")))
		if err != nil || stop <= grace {
			t.Errorf("stop_grace_period %v is not above SLUICE_SHUTDOWN_GRACE %v (docker's default is 10s)", dig(sluice, "stop_grace_period"), grace)
		}
	})
	t.Run("the Dockerfile the build names", func(t *testing.T) {
		df := filepath.Join(filepath.Dir(composeFile), ctx, cmpOr(str(dig(sluice, "build", "dockerfile")), "Dockerfile"))
		if _, err := os.Stat(df); errors.Is(err, fs.ErrNotExist) {
			t.Skipf("%s does not exist yet", df)
		} else if err != nil {
			t.Fatal(err)
		}
	})
}

// TestComposeConfig has Compose itself validate the file against its schema
// (offline), with whichever Compose is installed.
func TestComposeConfig(t *testing.T) {
	t.Parallel()
	var cmd *exec.Cmd
	if p, err := exec.LookPath("docker-compose"); err == nil {
		cmd = exec.Command(p, "-f", composeFile, "config", "-q")
	} else if p, err := exec.LookPath("docker"); err == nil && exec.Command(p, "compose", "version").Run() == nil {
		cmd = exec.Command(p, "compose", "-f", composeFile, "config", "-q")
	} else {
		t.Skip("neither docker-compose nor the docker compose plugin is installed; the compose schema is not checked")
	}
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%v: %v\n%s", cmd.Args, err, out)
	}
}

func anyStrings(v any) []string {
	var out []string
	for _, x := range anySlice(v) {
		out = append(out, fmtScalar(x))
	}
	return out
}

func anySlice(v any) []any { s, _ := v.([]any); return s }

func fmtScalar(v any) string {
	switch x := v.(type) {
	case string:
		return x
	case int:
		return strconv.Itoa(x)
	default:
		b, _ := json.Marshal(x)
		return string(b)
	}
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// ---------------------------------------------------------------- Grafana

type dashboard struct {
	SchemaVersion int `json:"schemaVersion"`
	UID           string
	Title         string
	Templating    struct {
		List []struct {
			Name  string `json:"name"`
			Type  string `json:"type"`
			Query any    `json:"query"`
		} `json:"list"`
	} `json:"templating"`
	Panels []panel `json:"panels"`
}

type panel struct {
	ID         int             `json:"id"`
	Type       string          `json:"type"`
	Title      string          `json:"title"`
	Datasource json.RawMessage `json:"datasource"`
	GridPos    struct{ H, W, X, Y int }
	Targets    []struct {
		Expr       string          `json:"expr"`
		Datasource json.RawMessage `json:"datasource"`
	} `json:"targets"`
	Panels []panel `json:"panels"` // collapsed rows
}

func TestDashboard(t *testing.T) {
	t.Parallel()
	b, err := os.ReadFile(dashboardFile)
	if err != nil {
		t.Fatal(err)
	}
	var d dashboard
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatal(err)
	}
	if d.SchemaVersion < 36 || d.UID == "" || d.Title == "" {
		t.Errorf("schemaVersion %d uid %q title %q", d.SchemaVersion, d.UID, d.Title)
	}
	vars := map[string]string{}
	var varQueries []string
	for _, v := range d.Templating.List {
		vars[v.Name] = v.Type
		if q, ok := v.Query.(map[string]any); ok {
			varQueries = append(varQueries, fmtScalar(q["query"]))
		}
	}
	if vars["datasource"] != "datasource" || vars["project_id"] == "" || vars["source_id"] == "" {
		t.Errorf("templating variables %v, want datasource, project_id and source_id", vars)
	}

	contract := metricContract()
	used := map[string]bool{}
	ids := map[int]bool{}
	var all []panel
	for _, p := range d.Panels {
		all = append(all, p)
		all = append(all, p.Panels...)
	}
	for _, p := range all {
		if ids[p.ID] {
			t.Errorf("panel id %d is used twice", p.ID)
		}
		ids[p.ID] = true
		if p.GridPos.W == 0 || p.GridPos.X+p.GridPos.W > 24 {
			t.Errorf("panel %q: gridPos %+v", p.Title, p.GridPos)
		}
		if p.Type == "row" {
			continue
		}
		if !strings.Contains(string(p.Datasource), "${datasource}") {
			t.Errorf("panel %q does not use the datasource variable", p.Title)
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			for _, err := range checkPromQL(tg.Expr, contract, used) {
				t.Errorf("panel %q: %v", p.Title, err)
			}
		}
	}
	for _, q := range varQueries {
		m := regexp.MustCompile(`^label_values\((.*),\s*(\w+)\)$`).FindStringSubmatch(q)
		if m == nil {
			continue
		}
		for _, err := range checkPromQL(m[1], contract, used) {
			t.Errorf("variable query %q: %v", q, err)
		}
		for _, err := range checkPromQL("sum by ("+m[2]+") ("+m[1]+")", contract, map[string]bool{}) {
			t.Errorf("variable query %q: %v", q, err)
		}
	}
	for name := range contract {
		if !used[name] {
			t.Errorf("no panel shows %s", name)
		}
	}
}

var (
	promString    = regexp.MustCompile(`"(?:[^"\\]|\\.)*"`)
	promMatchers  = regexp.MustCompile(`\{([^}]*)\}`)
	promMatcher   = regexp.MustCompile(`([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)\s*""`)
	promRange     = regexp.MustCompile(`\[[^\]]*\]`)
	promGrouping  = regexp.MustCompile(`\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)`)
	promIdent     = regexp.MustCompile(`[a-zA-Z_:][a-zA-Z0-9_:]*`)
	promRateFuncs = regexp.MustCompile(`\b(?:rate|irate|increase)\(`)
	promKeywords  = []string{"and", "or", "unless", "bool", "offset", "inf", "nan"}
)

// checkPromQL checks a PromQL expression against the metric contract: every
// series it selects is a contract metric (histograms only through _bucket,
// _sum or _count), every label it matches or groups by exists on the metrics
// it uses, and rate-like functions only see counters. It records the metrics
// it sees in used. A lexical check, not a full parser: enough for the
// expressions a dashboard holds.
func checkPromQL(expr string, contract map[string]metricSpec, used map[string]bool) []error {
	var errs []error
	e := promString.ReplaceAllString(expr, `""`)
	var labelRefs []string
	for _, m := range promMatchers.FindAllStringSubmatch(e, -1) {
		for _, lm := range promMatcher.FindAllStringSubmatch(m[1], -1) {
			labelRefs = append(labelRefs, lm[1])
		}
	}
	e = promMatchers.ReplaceAllString(e, " ")
	e = promRange.ReplaceAllString(e, " ")
	var groupRefs []string
	for _, m := range promGrouping.FindAllStringSubmatch(e, -1) {
		for _, l := range strings.Split(m[1], ",") {
			if l = strings.TrimSpace(l); l != "" {
				groupRefs = append(groupRefs, l)
			}
		}
	}
	e = promGrouping.ReplaceAllString(e, " ")

	allowed := map[string]bool{}
	for _, l := range targetLabels {
		allowed[l] = true
	}
	var series []string
	for _, loc := range promIdent.FindAllStringIndex(e, -1) {
		tok := e[loc[0]:loc[1]]
		if loc[0] > 0 && strings.ContainsAny(e[loc[0]-1:loc[0]], "0123456789.") {
			continue // exponent of a number
		}
		if rest := strings.TrimLeft(e[loc[1]:], " "); strings.HasPrefix(rest, "(") || slices.Contains(promKeywords, tok) {
			continue // a function or an operator
		}
		name, spec, ok := resolveSeries(tok, contract)
		if !ok {
			errs = append(errs, errors.New("unknown metric "+tok+" (not in the contract, or a histogram without _bucket/_sum/_count)"))
			continue
		}
		used[name] = true
		series = append(series, tok)
		for _, l := range spec.labels {
			allowed[l] = true
		}
		if strings.HasSuffix(tok, "_bucket") {
			allowed["le"] = true
		}
	}
	for _, l := range append(labelRefs, groupRefs...) {
		if len(errs) == 0 && !allowed[l] { // an unknown metric already explains it
			errs = append(errs, errors.New("label "+l+" is on none of "+strings.Join(series, ", ")))
		}
	}
	for _, loc := range promRateFuncs.FindAllStringIndex(e, -1) {
		arg := e[loc[1]:]
		depth := 1
		for i, r := range arg {
			depth += map[rune]int{'(': 1, ')': -1}[r]
			if depth == 0 {
				arg = arg[:i]
				break
			}
		}
		for _, tok := range promIdent.FindAllString(arg, -1) {
			if _, spec, ok := resolveSeries(tok, contract); ok && spec.kind == gauge {
				errs = append(errs, errors.New("rate of the gauge "+tok))
			}
		}
	}
	return errs
}

// resolveSeries maps a series name to its contract metric: a histogram's
// _bucket, _sum and _count series resolve to the histogram (reported as a
// counter, which is what those series are).
func resolveSeries(tok string, contract map[string]metricSpec) (string, metricSpec, bool) {
	if spec, ok := contract[tok]; ok && spec.kind != histogram {
		return tok, spec, true
	}
	for _, suf := range []string{"_bucket", "_sum", "_count"} {
		if base, ok := strings.CutSuffix(tok, suf); ok {
			if spec, ok := contract[base]; ok && spec.kind == histogram {
				spec.kind = counter
				return base, spec, true
			}
		}
	}
	return "", metricSpec{}, false
}
