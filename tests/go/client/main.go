// Test client for the proxyguard integration tests (Go standard library only).
//
// It sends N requests to -url with C workers through http.ProxyFromEnvironment
// (HTTP_PROXY / HTTPS_PROXY / NO_PROXY, set by the test harness), trusting the
// CA in -cafile in addition to the system roots, and prints ONE JSON line:
// {"ok":n,"failed":n,"statuses":{"200":n},"errors":{"msg":count},
//  "p50_ms":x,"p99_ms":x,"max_ms":x,"first_body":"..."}
package main

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	neturl "net/url"
	"os"
	"sort"
	"strconv"
	"sync"
	"time"
)

type result struct {
	OK        int            `json:"ok"`
	Failed    int            `json:"failed"`
	Statuses  map[string]int `json:"statuses"`
	Errors    map[string]int `json:"errors"`
	P50Ms     float64        `json:"p50_ms"`
	P99Ms     float64        `json:"p99_ms"`
	MaxMs     float64        `json:"max_ms"`
	FirstBody string         `json:"first_body"`
}

func percentile(sorted []float64, p float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	idx := int(float64(len(sorted)-1) * p)
	return sorted[idx]
}

func main() {
	url := flag.String("url", "", "target URL")
	n := flag.Int("n", 1, "number of requests")
	c := flag.Int("c", 1, "concurrent workers")
	timeout := flag.Duration("timeout", 10*time.Second, "per-request timeout")
	cafile := flag.String("cafile", "", "extra CA certificate (PEM) to trust")
	method := flag.String("method", "GET", "HTTP method")
	bodyLen := flag.Int("body", 0, "send a request body of this many bytes")
	keepAlive := flag.Bool("keepalive", true, "reuse connections between requests")
	interval := flag.Duration("interval", 0, "pause between one worker's requests")
	proxyURL := flag.String("proxy", "", "proxy for every target, loopback included (default: the environment)")
	wantLen := flag.Int("want-len", -1, "a body of any other length counts as failed (a cut that looks complete)")
	flag.Parse()
	if *url == "" {
		fmt.Fprintln(os.Stderr, "-url is required")
		os.Exit(2)
	}
	if *c < 1 {
		*c = 1
	}
	if *n < 0 {
		*n = 0
	}

	pool, err := x509.SystemCertPool()
	if err != nil || pool == nil {
		pool = x509.NewCertPool()
	}
	if *cafile != "" {
		pem, err := os.ReadFile(*cafile)
		if err != nil {
			fmt.Fprintln(os.Stderr, "read cafile:", err)
			os.Exit(2)
		}
		if !pool.AppendCertsFromPEM(pem) {
			fmt.Fprintln(os.Stderr, "cafile has no certificate")
			os.Exit(2)
		}
	}
	proxy := http.ProxyFromEnvironment
	if *proxyURL != "" {
		u, err := neturl.Parse(*proxyURL)
		if err != nil {
			fmt.Fprintln(os.Stderr, "bad -proxy:", err)
			os.Exit(2)
		}
		proxy = http.ProxyURL(u)
	}
	tr := &http.Transport{
		Proxy:               proxy,
		TLSClientConfig:     &tls.Config{RootCAs: pool},
		MaxIdleConns:        *c * 2,
		MaxIdleConnsPerHost: *c * 2,
		IdleConnTimeout:     30 * time.Second,
		DisableKeepAlives:   !*keepAlive,
	}
	payload := make([]byte, *bodyLen)
	for i := range payload {
		payload[i] = byte('a' + i%26)
	}
	client := &http.Client{Transport: tr, Timeout: *timeout}

	var mu sync.Mutex
	res := result{Statuses: map[string]int{}, Errors: map[string]int{}}
	lat := make([]float64, 0, *n)
	haveBody := false

	jobs := make(chan struct{})
	var wg sync.WaitGroup
	for w := 0; w < *c; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			first := true
			for range jobs {
				if !first && *interval > 0 {
					time.Sleep(*interval)
				}
				first = false
				start := time.Now()
				var rd io.Reader
				if *bodyLen > 0 {
					rd = bytes.NewReader(payload)
				}
				req, err := http.NewRequest(*method, *url, rd)
				var body []byte
				var status int
				if err == nil {
					var resp *http.Response
					resp, err = client.Do(req)
					if err == nil {
						body, err = io.ReadAll(resp.Body)
						resp.Body.Close()
						status = resp.StatusCode
						if err == nil && *wantLen >= 0 && status == 200 && len(body) != *wantLen {
							err = fmt.Errorf("short body: %d of %d bytes", len(body), *wantLen)
						}
					}
				}
				ms := float64(time.Since(start).Microseconds()) / 1000.0
				mu.Lock()
				lat = append(lat, ms)
				if err != nil {
					res.Failed++
					res.Errors[err.Error()]++
				} else {
					res.OK++
					res.Statuses[strconv.Itoa(status)]++
					if !haveBody {
						haveBody = true
						b := body
						if len(b) > 4096 {
							b = b[:4096]
						}
						res.FirstBody = string(b)
					}
				}
				mu.Unlock()
			}
		}()
	}
	for i := 0; i < *n; i++ {
		jobs <- struct{}{}
	}
	close(jobs)
	wg.Wait()

	sort.Float64s(lat)
	res.P50Ms = percentile(lat, 0.50)
	res.P99Ms = percentile(lat, 0.99)
	if len(lat) > 0 {
		res.MaxMs = lat[len(lat)-1]
	}
	out, _ := json.Marshal(res)
	fmt.Println(string(out))
}
