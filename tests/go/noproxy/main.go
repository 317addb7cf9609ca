// Command noproxy is the Go oracle for tests/noproxy_go.rs.
//
// It reads one request URL per line on stdin and prints, per line, what
// net/http.ProxyFromEnvironment (which uses the vendored
// golang.org/x/net/http/httpproxy) decides for it, given the proxy
// environment variables of this process:
//
//	DIRECT            no proxy is used
//	PROXY <url>       the proxy URL that would be used
//	ERROR <message>   ProxyFromEnvironment returned an error
//
// Go reads the environment once per process (sync.Once), so the caller
// starts one process per environment setting. Standard library only.
package main

import (
	"bufio"
	"fmt"
	"net/http"
	"os"
	"strings"
)

func main() {
	in := bufio.NewScanner(os.Stdin)
	out := bufio.NewWriter(os.Stdout)
	defer out.Flush()
	for in.Scan() {
		line := strings.TrimSpace(in.Text())
		if line == "" {
			continue
		}
		req, err := http.NewRequest("GET", line, nil)
		if err != nil {
			fmt.Fprintf(out, "ERROR bad url: %v\n", err)
			continue
		}
		proxy, err := http.ProxyFromEnvironment(req)
		switch {
		case err != nil:
			fmt.Fprintf(out, "ERROR %v\n", err)
		case proxy == nil:
			fmt.Fprintln(out, "DIRECT")
		default:
			fmt.Fprintf(out, "PROXY %s\n", proxy.String())
		}
	}
}
