// A Woodpecker server's side of its secret extension, for the tests: it
// signs and sends requests as Woodpecker 3.x does (server/services/utils/
// http.go with yaronf/httpsign's defaults), written here from RFC 9421 on
// Go's own crypto/ed25519, encoding/json and net/http, independently of
// the server's verifier. Standard library only (GOPATH mode, no modules).
//
// It reads one instruction, a JSON object, on stdin:
//
//	{"seed": hex, "mode": "pubkey"}: the public key's PEM, as the
//	    Woodpecker server serves it at /api/signature/public-key;
//	{"seed": hex, "mode": "send", "url": ..., "body": {...},
//	 "send_body": "..." (sent instead of the signed body: tampering),
//	 "created_offset": seconds added to now for "created",
//	 "times": how often to send the one signed request (a replay)}:
//	    a JSON list of {"status", "body"} on stdout.
package main

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"time"
)

const label = "woodpecker-ci-extensions"

type instruction struct {
	Seed          string                 `json:"seed"`
	Mode          string                 `json:"mode"`
	URL           string                 `json:"url"`
	Body          map[string]interface{} `json:"body"`
	SendBody      *string                `json:"send_body"`
	CreatedOffset int64                  `json:"created_offset"`
	Times         int                    `json:"times"`
}

type result struct {
	Status int    `json:"status"`
	Body   string `json:"body"`
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, err)
	os.Exit(1)
}

func main() {
	var in instruction
	if err := json.NewDecoder(os.Stdin).Decode(&in); err != nil {
		fail(err)
	}
	seed, err := hex.DecodeString(in.Seed)
	if err != nil || len(seed) != ed25519.SeedSize {
		fail(fmt.Errorf("seed: %d bytes of hex wanted", ed25519.SeedSize))
	}
	key := ed25519.NewKeyFromSeed(seed)
	if in.Mode == "pubkey" {
		der, err := x509.MarshalPKIXPublicKey(key.Public())
		if err != nil {
			fail(err)
		}
		if err := pem.Encode(os.Stdout, &pem.Block{Type: "PUBLIC KEY", Bytes: der}); err != nil {
			fail(err)
		}
		return
	}

	// The body as Woodpecker's Send makes it: json.Encoder, a newline at the end.
	encoded := new(bytes.Buffer)
	if err := json.NewEncoder(encoded).Encode(in.Body); err != nil {
		fail(err)
	}
	body := encoded.Bytes()
	sum := sha256.Sum256(body)
	digest := "sha-256=:" + base64.StdEncoding.EncodeToString(sum[:]) + ":"

	// RFC 9421: the signature base, then an ed25519 signature of it.
	target, err := url.Parse(in.URL)
	if err != nil {
		fail(err)
	}
	requestTarget := target.Path
	if target.RawQuery != "" {
		requestTarget += "?" + target.RawQuery
	}
	created := time.Now().Unix() + in.CreatedOffset
	params := `("@request-target" "content-digest");created=` + strconv.FormatInt(created, 10) + `;alg="ed25519"`
	base := `"@request-target": ` + requestTarget + "\n" +
		`"content-digest": ` + digest + "\n" +
		`"@signature-params": ` + params
	signature := base64.StdEncoding.EncodeToString(ed25519.Sign(key, []byte(base)))

	sent := body
	if in.SendBody != nil {
		sent = []byte(*in.SendBody)
	}
	times := in.Times
	if times < 1 {
		times = 1
	}
	client := &http.Client{Timeout: 60 * time.Second}
	results := []result{}
	for i := 0; i < times; i++ {
		req, err := http.NewRequest(http.MethodPost, in.URL, bytes.NewReader(sent))
		if err != nil {
			fail(err)
		}
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Content-Digest", digest)
		req.Header.Set("Signature-Input", label+"="+params)
		req.Header.Set("Signature", label+"=:"+signature+":")
		resp, err := client.Do(req)
		if err != nil {
			fail(err)
		}
		answer, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			fail(err)
		}
		results = append(results, result{Status: resp.StatusCode, Body: string(answer)})
	}
	if err := json.NewEncoder(os.Stdout).Encode(results); err != nil {
		fail(err)
	}
}
