"""One module per endpoint family, each with `router = APIRouter()`; toolkit.serving.serve composes them."""
