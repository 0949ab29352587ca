"""The CUDA-step handler with the mixin."""

from cuda_step import CudaStep

from handler_mixins import ObservabilityMixin


class CudaStepObserved(ObservabilityMixin, CudaStep):
    pass
