// Command gocheck decodes a secrets plugin's output exactly as the Nomad
// client does, so the Python test-suite can check nomad-secrets against the
// real encoding/json and hashicorp/go-version code rather than a re-creation.
//
// It mirrors (as of Nomad with go-version v1.9.0):
//
//   - client/commonplugins/secrets_plugin.go: Fingerprint and Fetch do
//     `res := &T{}; json.Unmarshal(stdout, &res)` -- note the pointer to a
//     pointer: a top-level JSON `null` makes res nil without an error, and
//     Nomad then dereferences it (a nil-pointer panic in the client).
//   - client/fingerprint/secrets.go: a plugin is registered only when
//     Version != nil && Type != nil && *Type == "secrets"; the node attribute
//     is Version.Original().
//   - client/allocrunner/taskrunner/secrets/plugin_provider.go: if
//     resp.Error != nil the fetch fails with
//     provider %q for secret %q response contained error: %q
//
// Usage (input on stdin unless noted; one JSON object on stdout; exit 0
// unless the program itself is misused, which exits 2):
//
//	gocheck fingerprint
//	gocheck fetch [PROVIDER SECRET]
//	gocheck versions V1 V2 ...
//	gocheck compare A B
//
// Build in GOPATH mode (no module download needed):
//
//	GO111MODULE=off GOPATH=/usr/share/gocode GOCACHE=$tmp CGO_ENABLED=0 \
//	    GOFLAGS= go build -o $tmp/gocheck main.go
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sort"

	version "github.com/hashicorp/go-version"
)

// nomadVersion stands in for *version.Version inside PluginFingerprint.
//
// Nomad vendors go-version v1.9.0, whose (*Version).UnmarshalText is
//
//	temp, err := NewVersion(string(b)); if err != nil { return err }; *v = *temp
//
// (there is no UnmarshalJSON).  The Debian package installed here is
// go-version v1.3.0, which has neither UnmarshalText nor UnmarshalJSON, so a
// bare *version.Version field would be decoded field-by-field as a plain
// struct (and silently stay zero).  This wrapper re-adds exactly the v1.9.0
// UnmarshalText on top of v1.3.0's NewVersion, so encoding/json takes the
// same code paths: a JSON string is unquoted and parsed with NewVersion (a
// parse error aborts the whole Unmarshal), JSON null leaves the pointer nil,
// and any other JSON type is an UnmarshalTypeError.  The only visible
// difference is the Go type name inside error messages.  NewVersion, the
// regexp and Compare are identical in v1.3.0 and v1.9.0 apart from the
// capitalisation of error strings ("Malformed version" vs "malformed
// version").
type nomadVersion struct {
	v *version.Version
}

func (n *nomadVersion) UnmarshalText(b []byte) error {
	temp, err := version.NewVersion(string(b))
	if err != nil {
		return err
	}
	n.v = temp
	return nil
}

// PluginFingerprint mirrors commonplugins.PluginFingerprint.
type PluginFingerprint struct {
	Version *nomadVersion `json:"version"`
	Type    *string       `json:"type"`
}

// SecretResponse mirrors commonplugins.SecretResponse.
type SecretResponse struct {
	Result map[string]string `json:"result"`
	Error  *string           `json:"error"`
}

type fingerprintOut struct {
	OK      bool    `json:"ok"`
	Decoded bool    `json:"decoded"`
	Version *string `json:"version"`
	Type    *string `json:"type"`
	Error   string  `json:"error"`
}

type fetchOut struct {
	OK          bool              `json:"ok"`
	Decoded     bool              `json:"decoded"`
	Result      map[string]string `json:"result"`
	Error       string            `json:"error"`
	PluginError *string           `json:"plugin_error"`
}

type versionsOut struct {
	Parsed    map[string]bool   `json:"parsed"`
	Canonical map[string]string `json:"canonical"`
	Errors    map[string]string `json:"errors"`
	Sorted    []string          `json:"sorted"`
	Compare   [][3]int          `json:"compare"`
}

type compareOut struct {
	Cmp   *int   `json:"cmp"`
	Error string `json:"error,omitempty"`
}

// Messages for the nil-response case, shared verbatim with gocheck.py.
const (
	nilFingerprintMsg = "fingerprint output is JSON null: json.Unmarshal sets the *PluginFingerprint to nil and Nomad would dereference it (nil pointer panic)"
	nilFetchMsg       = "fetch output is JSON null: json.Unmarshal sets the *SecretResponse to nil and Nomad would dereference it (nil pointer panic)"
)

func fingerprint(stdout []byte) fingerprintOut {
	res := &PluginFingerprint{}
	if err := json.Unmarshal(stdout, &res); err != nil {
		return fingerprintOut{Error: err.Error()}
	}
	out := fingerprintOut{Decoded: true}
	if res == nil {
		out.Error = nilFingerprintMsg
		return out
	}
	if res.Version != nil && res.Version.v != nil {
		orig := res.Version.v.Original()
		out.Version = &orig
	}
	out.Type = res.Type
	switch {
	case res.Version == nil || res.Version.v == nil:
		out.Error = "skipped: version is missing or null"
	case res.Type == nil:
		out.Error = "skipped: type is missing or null"
	case *res.Type != "secrets":
		out.Error = fmt.Sprintf("skipped: type is %q, not \"secrets\"", *res.Type)
	default:
		out.OK = true
	}
	return out
}

func fetch(stdout []byte, provider, secret string) fetchOut {
	res := &SecretResponse{}
	if err := json.Unmarshal(stdout, &res); err != nil {
		return fetchOut{Error: err.Error()}
	}
	out := fetchOut{Decoded: true}
	if res == nil {
		out.Error = nilFetchMsg
		return out
	}
	out.Result = res.Result
	out.PluginError = res.Error
	if res.Error != nil {
		out.Error = fmt.Sprintf("provider %q for secret %q response contained error: %q",
			provider, secret, *res.Error)
		return out
	}
	out.OK = true
	return out
}

func versions(args []string) versionsOut {
	out := versionsOut{
		Parsed:    map[string]bool{},
		Canonical: map[string]string{},
		Errors:    map[string]string{},
		Sorted:    []string{},
		Compare:   [][3]int{},
	}
	parsed := make([]*version.Version, len(args))
	var ok []*version.Version
	for i, a := range args {
		v, err := version.NewVersion(a)
		out.Parsed[a] = err == nil
		if err != nil {
			out.Errors[a] = err.Error()
			continue
		}
		out.Canonical[a] = v.String()
		parsed[i] = v
		ok = append(ok, v)
	}
	for i, a := range parsed {
		for j, b := range parsed {
			if a != nil && b != nil {
				out.Compare = append(out.Compare, [3]int{i, j, a.Compare(b)})
			}
		}
	}
	sort.SliceStable(ok, func(i, j int) bool { return ok[i].LessThan(ok[j]) })
	for _, v := range ok {
		out.Sorted = append(out.Sorted, v.Original())
	}
	return out
}

func compare(a, b string) compareOut {
	va, err := version.NewVersion(a)
	if err != nil {
		return compareOut{Error: err.Error()}
	}
	vb, err := version.NewVersion(b)
	if err != nil {
		return compareOut{Error: err.Error()}
	}
	c := va.Compare(vb)
	return compareOut{Cmp: &c}
}

func usage(msg string) {
	fmt.Fprintf(os.Stderr, "gocheck: %s\nusage: gocheck fingerprint | fetch [PROVIDER SECRET] | versions V... | compare A B\n", msg)
	os.Exit(2)
}

func readStdin() []byte {
	b, err := io.ReadAll(os.Stdin)
	if err != nil {
		fmt.Fprintf(os.Stderr, "gocheck: reading stdin: %v\n", err)
		os.Exit(2)
	}
	return b
}

func main() {
	if len(os.Args) < 2 {
		usage("missing subcommand")
	}
	args := os.Args[2:]
	var out interface{}
	switch os.Args[1] {
	case "fingerprint":
		if len(args) != 0 {
			usage("fingerprint takes no arguments")
		}
		out = fingerprint(readStdin())
	case "fetch":
		provider, secret := "provider", "secret"
		switch len(args) {
		case 0:
		case 2:
			provider, secret = args[0], args[1]
		default:
			usage("fetch takes no arguments or PROVIDER SECRET")
		}
		out = fetch(readStdin(), provider, secret)
	case "versions":
		out = versions(args)
	case "compare":
		if len(args) != 2 {
			usage("compare takes exactly two versions")
		}
		out = compare(args[0], args[1])
	default:
		usage(fmt.Sprintf("unknown subcommand %q", os.Args[1]))
	}
	enc := json.NewEncoder(os.Stdout)
	if err := enc.Encode(out); err != nil {
		fmt.Fprintf(os.Stderr, "gocheck: encoding output: %v\n", err)
		os.Exit(2)
	}
}
