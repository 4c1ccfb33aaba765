"""Networks: masked (subnetwork) layers, top-c selection and the architectures built from them."""
