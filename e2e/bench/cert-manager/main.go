// Command cert-manager-controller runs cert-manager's own controllers, out of cluster, for the
// side-by-side benchmark (make bench). cert-manager's controller binary lives in a module the
// Go module proxy does not serve, so this wrapper starts the controllers of the published
// github.com/cert-manager/cert-manager module the way that binary does by default: the default
// controller set, 5 workers each, default API QPS/burst and backoff, no leader election (a single
// replica), no metrics server. Left out: the experimental CertificateSigningRequest controllers
// (off by default) and the Venafi issuer and CertificateRequest controller (its client module is
// not served); neither takes part in CA issuance.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	controllerpkg "github.com/cert-manager/cert-manager/pkg/controller"
	logf "github.com/cert-manager/cert-manager/pkg/logs"

	_ "github.com/cert-manager/cert-manager/pkg/controller/acmechallenges"
	_ "github.com/cert-manager/cert-manager/pkg/controller/acmeorders"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificate-shim/ingresses"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificaterequests/acme"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificaterequests/approver"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificaterequests/ca"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificaterequests/selfsigned"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificaterequests/vault"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/issuing"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/keymanager"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/metrics"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/readiness"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/requestmanager"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/revisionmanager"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/trigger"
	_ "github.com/cert-manager/cert-manager/pkg/controller/clusterissuers"
	_ "github.com/cert-manager/cert-manager/pkg/controller/issuers"

	// The issuer implementations register themselves with the issuer factory.
	_ "github.com/cert-manager/cert-manager/pkg/issuer/acme"
	_ "github.com/cert-manager/cert-manager/pkg/issuer/ca"
	_ "github.com/cert-manager/cert-manager/pkg/issuer/selfsigned"
	_ "github.com/cert-manager/cert-manager/pkg/issuer/vault"
)

// The defaults of cert-manager's controller configuration.
const (
	defaultQPS     = 20
	defaultBurst   = 50
	defaultWorkers = 5
)

func main() {
	kubeconfig := flag.String("kubeconfig", "", "kubeconfig of the cluster to run against")
	workers := flag.Int("workers", defaultWorkers, "workers per controller")
	flag.Parse()

	logf.InitLogs()
	defer logf.FlushLogs()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx = logf.NewContext(ctx, logf.Log, "controller")

	opts := controllerpkg.ContextOptions{
		Kubeconfig:         *kubeconfig,
		KubernetesAPIQPS:   defaultQPS,
		KubernetesAPIBurst: defaultBurst,
		IssuerOptions: controllerpkg.IssuerOptions{
			ClusterResourceNamespace: "kube-system",
		},
		ACMEOptions: controllerpkg.ACMEOptions{
			DNS01CheckAuthoritative: true,
			DNS01CheckRetryPeriod:   10 * time.Second,
		},
		IngressShimOptions: controllerpkg.IngressShimOptions{
			DefaultAutoCertificateAnnotations: []string{"kubernetes.io/tls-acme"},
		},
		CertificateOptions: controllerpkg.CertificateOptions{
			CertificateRequestMinimumBackoffDuration: time.Hour,
			CertificateRequestMaximumBackoffDuration: 32 * time.Hour,
		},
		SchedulerOptions: controllerpkg.SchedulerOptions{MaxConcurrentChallenges: 60},
	}
	factory, err := controllerpkg.NewContextFactory(ctx, opts)
	if err != nil {
		fail(err)
	}

	var running []controllerpkg.Interface
	for name, construct := range controllerpkg.Known() {
		c, err := construct(factory)
		if err != nil {
			fail(fmt.Errorf("controller %s: %w", name, err))
		}
		running = append(running, c)
	}

	// Every controller shares these factories: start them once all informers are registered.
	shared, err := factory.Build()
	if err != nil {
		fail(err)
	}
	shared.SharedInformerFactory.Start(ctx.Done())
	shared.KubeSharedInformerFactory.Start(ctx.Done())
	shared.HTTP01ResourceMetadataInformersFactory.Start(ctx.Done())

	var wg sync.WaitGroup
	for _, c := range running {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := c.Run(*workers, ctx); err != nil {
				fail(err)
			}
		}()
	}
	wg.Wait()
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "cert-manager-controller:", err)
	os.Exit(1)
}
