"""Networks: bridges, endpoints, published ports and the embedded DNS."""
