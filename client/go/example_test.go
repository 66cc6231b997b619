package tokenvend_test

import (
	"context"
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
