"""vip-agent: highly available VIPs for Kubernetes with keepalived and haproxy."""
