package tokenvend_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http"
	"time"

	"golang.org/x/oauth2"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	tokenvend "github.com/tokenvend/tokenvend/client/go"
)

func ExampleClient_GetToken() {
	tv, err := tokenvend.NewClient("127.0.0.1:50051")
	if err != nil {
		log.Fatal(err)
	}
	defer tv.Close()

	tok, err := tv.GetToken(context.Background(), "jakamo", tokenvend.MinTTL(30*time.Second))
	switch status.Code(err) {
	case codes.OK:
		fmt.Println(tok) // prints the profile, type and expiry; the token is redacted
	case codes.NotFound:
		log.Fatal("no such profile")
	default:
		log.Fatal(err)
	}
}

func ExampleClient_Watch() {
	tv, err := tokenvend.NewClient("127.0.0.1:50051")
	if err != nil {
		log.Fatal(err)
	}
	defer tv.Close() // also ends the watch

	// From now on GetToken answers from a copy tokenvend keeps current.
	if err := tv.Watch(context.Background(), "jakamo"); err != nil && !tokenvend.Retryable(err) {
		log.Fatal(err) // an unknown profile, say; a retryable error is retried in the background
	}
	tok, err := tv.GetToken(context.Background(), "jakamo")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(tok.ExpiresAt)
}

func ExampleRetryable() {
	tv, err := tokenvend.NewClient("127.0.0.1:50051")
	if err != nil {
		log.Fatal(err)
	}
	defer tv.Close()

	api := &http.Client{Transport: &tokenvend.Transport{Client: tv, Profile: "jakamo"}, Timeout: 5 * time.Second}
	resp, err := api.Get("https://demo.thejakamo.com/api/order/response")
	var tverr *tokenvend.Error
	switch {
	case err == nil:
		resp.Body.Close()
	case errors.As(err, &tverr) && !tverr.Retryable():
		log.Fatalf("tokenvend refused (%s): fix the configuration", tverr.Code)
	case tokenvend.Retryable(err):
		// back off and try again
	}
}

func ExampleTransport() {
	tv, err := tokenvend.NewClient("127.0.0.1:50051",
		tokenvend.WithServiceAccountTokenFile("/var/run/secrets/tokens/tokenvend"))
	if err != nil {
		log.Fatal(err)
	}
	defer tv.Close()

	api := &http.Client{
		Transport: &tokenvend.Transport{Client: tv, Profile: "jakamo"},
		Timeout:   30 * time.Second,
	}
	resp, err := api.Get("https://demo.thejakamo.com/api/order/response")
	if err != nil {
		log.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	fmt.Println(resp.Status, len(body))
}

func ExampleTokenSource() {
	ctx := context.Background()
	tv, err := tokenvend.NewClient("127.0.0.1:50051")
	if err != nil {
		log.Fatal(err)
	}
	defer tv.Close()

	// Where the code used clientcredentials.Config{...}.Client(ctx):
	api := oauth2.NewClient(ctx, tokenvend.TokenSource(ctx, tv, "jakamo"))
	_ = api
}
