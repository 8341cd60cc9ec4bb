// A static Go program for the supervised mode's network test: `serve ADDR DIR` serves DIR
// over HTTP (net/http, epoll and non-blocking sockets underneath); `get URL` writes the body
// of URL to stdout and fails on a status other than 200.
package main

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
)

func main() {
	if len(os.Args) == 4 && os.Args[1] == "serve" {
		ln, err := net.Listen("tcp", os.Args[2])
		if err != nil {
			fmt.Fprintln(os.Stderr, "listen:", err)
			os.Exit(1)
		}
		fmt.Println("listening on", ln.Addr())
		err = http.Serve(ln, http.FileServer(http.Dir(os.Args[3])))
		fmt.Fprintln(os.Stderr, "serve:", err)
		os.Exit(1)
	}
	if len(os.Args) == 3 && os.Args[1] == "get" {
		rsp, err := http.Get(os.Args[2])
		if err != nil {
			fmt.Fprintln(os.Stderr, "get:", err)
			os.Exit(1)
		}
		defer rsp.Body.Close()
		if rsp.StatusCode != 200 {
			fmt.Fprintln(os.Stderr, "status:", rsp.Status)
			os.Exit(1)
		}
		if _, err := io.Copy(os.Stdout, rsp.Body); err != nil {
			fmt.Fprintln(os.Stderr, "read:", err)
			os.Exit(1)
		}
		return
	}
	fmt.Fprintln(os.Stderr, "usage: gohttp serve ADDR DIR | gohttp get URL")
	os.Exit(2)
}
